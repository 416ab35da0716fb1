"""`nimsforest bench`: printed performance figures next to a baseline from the same run.

Benchmarks are not tests: they print rates and ratios, they never pass or fail on speed.
Each benchmark lives in nimsforest/bench/<name>.py and exposes `command` (a click command).
"""

from __future__ import annotations

import importlib

import click

_BENCHES: dict[str, str] = {
    "startup": "nimsforest.bench.startup:command",
    "cluster": "nimsforest.bench.cluster:command",
    "pipeline": "nimsforest.bench.pipeline:command",
    "nim": "nimsforest.bench.nim:command",
    "stack": "nimsforest.bench.stack:command",
    "dashboard": "nimsforest.bench.dashboard:command",
}


class _BenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*sorted(_BENCHES), "all"]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "all":
            return _all
        target = _BENCHES.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Print benchmark figures (rates and ratios against a raw baseline from the same run)."""


@click.command("all")
@click.pass_context
def _all(ctx: click.Context) -> None:
    """Run every benchmark with its defaults, one after another."""
    group = ctx.parent.command if ctx.parent else bench
    for name in sorted(_BENCHES):
        assert isinstance(group, click.Group)
        cmd = group.get_command(ctx, name)
        if cmd is not None:
            click.echo(f"== bench {name} ==")
            ctx.invoke(cmd)
