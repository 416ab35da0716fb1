"""`nimsforest cluster restart --rolling`: restart (or upgrade) every node, one at a time."""

from __future__ import annotations

import asyncio
import shlex

import click

from nimsforest.cli._common import EXIT_FAILURE, EXIT_USAGE, fail, run_async
from nimsforest.cli._nodes import registry_nodes
from nimsforest.deploy.rolling import (
    Limits,
    RestartFailed,
    RollResult,
    Target,
    api_restart,
    rolling_restart,
)
from nimsforest.settings import api_headers, local_http_url


def _fill(command: str, target: Target) -> str:
    host = target.api_url.removeprefix("http://").rsplit(":", 1)[0].strip("[]")
    return command.format(node=shlex.quote(target.name), api=shlex.quote(target.api_url),
                          host=shlex.quote(host))


async def _run(registry_url: str, command: str | None, only: tuple[str, ...],
               limits: Limits) -> RollResult:
    nodes = await registry_nodes(registry_url)
    if only:
        unknown = sorted(set(only) - {n.name for n in nodes})
        if unknown:
            fail(f"There is no node '{unknown[0]}' in the registry at {registry_url}.", EXIT_USAGE)
    every = [Target(n.name, local_http_url(n.api)) for n in nodes]
    targets = [t for t in every if not only or t.name in only]
    others = [t for t in every if t not in targets]  # must be whole too, not restarted

    async def run_command(target: Target) -> None:
        assert command is not None
        line = _fill(command, target)
        click.echo(f"$ {line}", err=True)
        proc = await asyncio.create_subprocess_shell(line)
        code = await proc.wait()
        if code != 0:
            raise RestartFailed(f"the restart command exited with {code}")

    restart = run_command if command is not None else api_restart(api_headers())
    return await rolling_restart(targets, restart, limits=limits, headers=api_headers(), others=others,
                                 say=lambda s: click.echo(s, err=True))


@click.command("restart")
@click.option("--rolling", is_flag=True, help="One node at a time (the only kind of restart offered).")
@click.option("--command", "command", default=None, metavar="CMD",
              help="The shell command that restarts one node, run here once per node while it "
                   "is drained; {node}, {host} and {api} are filled in, e.g. "
                   "'ssh {host} sudo systemctl restart nimsforest'. Without it, each node is "
                   "asked through its API (POST /api/v1/node/restart): it exits with status 75 "
                   "and its supervisor (systemd, a container runtime) starts it again.")
@click.option("--registry-url", envvar="REGISTRY_URL", required=True,
              help="The registry that lists the nodes and their APIs [REGISTRY_URL].")
@click.option("--node", "only", multiple=True,
              help="Restart only this node (repeatable); the others must be whole all the same.")
@click.option("--drain-timeout", default=120.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds a node may take to drain.")
@click.option("--timeout", default=300.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds a node may take to come back, then to be healthy with every stream "
                   "current.")
def restart(rolling: bool, command: str | None, registry_url: str, only: tuple[str, ...],
            drain_timeout: float, timeout: float) -> None:
    """Restart every node, one at a time, without a client noticing (also for upgrades).

    \b
    Only from a whole cluster (every node healthy, every stream current; one not
    whole yet is waited for up to 60 s, one with a drained node refused). For each
    node, the meta leader last: drain it (nimsforest drain) -> run CMD (without
    --command: ask the node to restart itself, through its API) -> wait until a new
    process answers (it starts drained) -> undrain it -> wait until it is healthy and
    every stream is current -> the next. It stops at the first node that does not drain,
    come back or catch up, says why, and leaves the other nodes as they are.

    \b
    Nodes without ssh, under systemd or a container restart policy:
      nimsforest cluster restart --rolling --registry-url http://registry:8500

    \b
    Upgrade: let CMD install the new version before it restarts, e.g.
      nimsforest cluster restart --rolling --registry-url http://registry:8500 \\
        --command 'ssh {host} "sudo /opt/nimsforest/bin/pip install -U nimsforest && sudo systemctl restart nimsforest"'
    """
    if not rolling:
        fail("Only rolling restarts are offered (--rolling): restarting every node at once "
             "would stop the cluster.", EXIT_USAGE)
    try:
        if command is not None:
            _fill(command, Target("n", "http://h:1"))
    except (KeyError, IndexError, ValueError) as exc:
        fail(f"--command may use {{node}}, {{host}} and {{api}} only ({exc}).", EXIT_USAGE)
    limits = Limits(drain=drain_timeout, come_back=timeout, catch_up=timeout)
    result = run_async(_run(registry_url, command, only, limits))
    click.echo(("done: " if result.ok else "stopped: ") + result.sentence)
    if not result.ok:
        raise SystemExit(EXIT_FAILURE)
