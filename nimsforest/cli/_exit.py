"""Exit codes and the one-sentence error, for every command (nothing heavy imported: the
commands that must start fast, `lint`, `test`, `stack up`, take them from here)."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

EXIT_FAILURE = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print `nimsforest: <message>` on stderr and exit with `code`."""
    click.echo(f"nimsforest: {message}", err=True)
    sys.exit(code)


__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "fail"]
