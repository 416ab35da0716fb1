"""Every command and sub-command has --help (walked from the real command tree)."""

from __future__ import annotations

import click
from click.testing import CliRunner

from nimsforest.cli import main


def walk(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, f"{' '.join((*prefix, name))} is listed but cannot be loaded"
        out.append((*prefix, name))
        if isinstance(cmd, click.Group):
            out += walk(cmd, click.Context(cmd, parent=ctx, info_name=name), (*prefix, name))
    return out


def test_every_command_has_help() -> None:
    paths = walk(main, click.Context(main, info_name="nimsforest"))
    expected = {"run", "standalone", "registry", "cluster", "flow", "add", "remove", "list", "status",
                "reload", "audit", "grow", "cloud-init", "nats-config", "systemd-unit", "bench"}
    assert expected <= {p[0] for p in paths}
    assert len(paths) >= 27  # sub-commands included (add tree, registry serve, bench startup, ...)
    runner = CliRunner()
    for path in [(), *paths]:
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output, path
        doc = result.output.split("Usage:", 1)[1]
        assert len(doc.strip().splitlines()) > 2, f"{' '.join(path)} --help says nothing"
