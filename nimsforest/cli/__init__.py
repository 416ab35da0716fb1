"""The `nimsforest` / `forest` command line.

Sub-commands are loaded lazily (each lives in its own module and is imported only when
it runs), so `nimsforest status` does not pay for the daemon's imports and the daemon
starts nats-server before it imports its web stack.

A bare invocation with flags only (`nimsforest --registry-url URL`) or with no
arguments at all runs the production daemon, as the design card asks: it is the same
as `nimsforest run ...`.
"""

from __future__ import annotations

import importlib

import click

from nimsforest import __version__

# name -> "module:attribute". One line per command; the module owns the command.
_COMMANDS: dict[str, str] = {
    "run": "nimsforest.cli.node:run",
    "standalone": "nimsforest.cli.node:standalone",
    "bench": "nimsforest.cli.bench:bench",
    "cluster": "nimsforest.cli.cluster:cluster",
    "registry": "nimsforest.cli.registry:registry",
    "flow": "nimsforest.cli.flow:flow",
    "lint": "nimsforest.cli.lint:lint",
    "test": "nimsforest.cli.testcmd:test",
    "nats-config": "nimsforest.cli.nats_config:nats_config",
    "nats-context": "nimsforest.cli.nats_context:nats_context",
    "systemd-unit": "nimsforest.cli.systemd_unit:systemd_unit",
    "cloud-init": "nimsforest.cli.cloud_init:cloud_init",
    "grow": "nimsforest.cli.grow:grow",
    "add": "nimsforest.cli.control:add",
    "remove": "nimsforest.cli.control:remove",
    "list": "nimsforest.cli.control:list_",
    "status": "nimsforest.cli.control:status",
    "reload": "nimsforest.cli.control:reload",
    "audit": "nimsforest.cli.control:audit",
    "dead": "nimsforest.cli.dead:dead",
    "replay": "nimsforest.cli.replay:replay",
    "stack": "nimsforest.cli.stack:stack",
    "service": "nimsforest.cli.stack:service",
    "why": "nimsforest.cli.lineage:why", "trace": "nimsforest.cli.lineage:trace",
    "soil": "nimsforest.cli.readers:soil", "leaves": "nimsforest.cli.readers:leaves", "river": "nimsforest.cli.readers:river",  # noqa: E501
    "drain": "nimsforest.cli.drain:drain", "undrain": "nimsforest.cli.drain:undrain",
}
_ALIASES: dict[str, str] = {"start": "run", "rm": "remove", "ls": "list"}
_DEFAULT_COMMAND = "run"


class _ForestGroup(click.Group):
    """A click group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd_name = _ALIASES.get(cmd_name, cmd_name)
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # `nimsforest --registry-url URL` and plain `nimsforest` mean `nimsforest run ...`.
        if not args or (args[0].startswith("-") and args[0] not in ("--help", "-h", "--version")):
            args = [_DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


@click.group(cls=_ForestGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="nimsforest")
def main() -> None:
    """NimsForest: event-driven business logic on a self-forming NATS cluster.

    \b
    Daemon:
      nimsforest --registry-url URL    run a cluster node (same as `nimsforest run`)
      nimsforest standalone            run a single node on this machine

    \b
    Changing a running forest (through NIMSFOREST_API):
      nimsforest add treehouse NAME --subscribes S --publishes P --script FILE
      nimsforest remove KIND NAME | list [KIND] | status | reload | audit
      nimsforest dead list|show|replay|purge    what components gave up on
      nimsforest replay KIND NAME --from-seq N | --since TIME

    Every command has its own --help.
    """


def register(name: str, target: str) -> None:
    """Register a lazily imported sub-command (used by tests and plugins)."""
    _COMMANDS[name] = target


__all__ = ["main", "register"]
