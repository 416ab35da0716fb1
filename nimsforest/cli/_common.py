"""Helpers shared by CLI commands: one-sentence errors, exit codes, the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from nimsforest.cli._exit import EXIT_FAILURE, EXIT_USAGE, fail
from nimsforest.settings import Settings, SettingsError, load_settings

T = TypeVar("T")


def emit(text: str, output: Path | None, *, private: bool = False) -> None:
    """Print `text`, or write it to `output` (mode 0600 when `private`: it holds secrets)."""
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        if private:
            from natsembed import write_private

            write_private(output, text)
        else:
            output.write_text(text)
    except OSError as exc:
        fail(f"Cannot write {output}: {exc.strerror or exc}.", EXIT_FAILURE)


def settings_from(config: Path | None, defaults: dict[str, Any] | None = None, **flags: Any) -> Settings:
    try:
        return load_settings(config, defaults=defaults, **flags)
    except SettingsError as exc:
        fail(str(exc), EXIT_USAGE)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
    return uvloop.run(coro)
