"""`nimsforest registry`: run a registry server, or look at one."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from registry import Registry

F = TypeVar("F", bound=Callable[..., Any])


def _default_data() -> Path:
    from nimsforest.settings import default_data_dir

    return default_data_dir() / "registry"


@click.group("registry", context_settings={"help_option_names": ["-h", "--help"]})
def registry() -> None:
    """Run a NimsForest registry server, list the nodes a registry knows, or give a node
    metadata (its zone, ...).

    The HTTP API, the backends and the timing rule are described in docs/REGISTRY.md.
    """


@registry.command("serve")
@click.option(
    "--host",
    default="0.0.0.0",
    show_default=True,
    envvar="REGISTRY_HOST",
    help="Address to listen on (env REGISTRY_HOST).",
)
@click.option(
    "--port",
    default=8500,
    show_default=True,
    type=click.IntRange(1, 65535),
    envvar="REGISTRY_PORT",
    help="TCP port to listen on (env REGISTRY_PORT).",
)
@click.option(
    "--data",
    "data",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="REGISTRY_DATA",
    default=None,
    help="Directory for the registry's state (state.json), so registrations "
    "survive a restart (env REGISTRY_DATA; default: <data dir>/registry).",
)
@click.option(
    "--token",
    envvar="REGISTRY_TOKEN",
    default=None,
    help="Require 'Authorization: Bearer TOKEN' on every request (env REGISTRY_TOKEN; "
    "prefer the env variable: flags show up in ps).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Log verbosity.",
)
def serve(host: str, port: int, data: Path | None, token: str | None, log_level: str) -> None:
    """Serve the registry HTTP API (register, list, heartbeat, deregister, blocking watch).

    \b
    Example:
      nimsforest registry serve --port 8500 --data /var/lib/nimsforest-registry
    """
    import uvicorn

    from registry import StateFileError, create_app

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    log = logging.getLogger("registry")
    data_dir = data if data is not None else _default_data()
    try:
        app = create_app(data_dir=data_dir, token=token)
    except StateFileError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(
            f"Cannot use {data_dir} for the registry's state: {exc.strerror or exc}."
        ) from None

    store = app.state.store

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            store.close()  # blocking queries answer at once instead of holding the shutdown
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    shown = f"[{host}]" if ":" in host else host
    log.info(
        "Registry serving on http://%s:%d (state in %s, %s).",
        shown,
        port,
        data_dir,
        "bearer token required" if token else "no token: anyone who can reach it can register",
    )
    server = _Server(config)
    server.run()
    if not server.started:
        raise click.ClickException(
            f"The registry could not listen on {shown}:{port}; see the log above."
        )


def _registry_options(fn: F) -> F:
    """The options every command that talks to a registry takes."""
    options = [
        click.option(
            "--registry-url",
            envvar="REGISTRY_URL",
            required=True,
            help="Registry URL: http(s)://..., file:///...registry.json?forest=ID "
            "(env REGISTRY_URL).",
        ),
        click.option(
            "--registry-service",
            envvar="REGISTRY_SERVICE_NAME",
            default="nimsforest",
            show_default=True,
            help="Service name (env REGISTRY_SERVICE_NAME).",
        ),
        click.option(
            "--token",
            envvar="REGISTRY_TOKEN",
            default=None,
            help="Bearer token (env REGISTRY_TOKEN).",
        ),
        click.option(
            "--timeout", default="10s", show_default=True, help="Give up after this long (e.g. 5s)."
        ),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _open(registry_url: str, registry_service: str, token: str | None, timeout: str) -> Registry:
    from nimsforest.settings import parse_duration
    from registry import open_registry

    try:
        seconds = parse_duration(timeout)
        return open_registry(
            registry_url,
            service=registry_service,
            token=token,
            heartbeat_interval=max(seconds, 0.1),
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@registry.command("nodes")
@_registry_options
def nodes(
    registry_url: str, registry_service: str, token: str | None, timeout: str, as_json: bool
) -> None:
    """List the live nodes of a service, oldest (lowest create index) first."""
    from registry import RegistryError

    reg = _open(registry_url, registry_service, token, timeout)

    async def fetch() -> list[Any]:
        async with reg:
            return await reg.list_nodes()

    try:
        listed = asyncio.run(fetch())
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([n.model_dump(mode="json") for n in listed], indent=2))
        return
    if not listed:
        click.echo(f"No live nodes in service {registry_service}.")
        return
    click.echo(f"{'INDEX':>6}  {'NAME':<24} {'CLUSTER ADDRESS':<28} REGISTERED")
    for n in listed:
        when = n.registered_at.strftime("%Y-%m-%d %H:%M:%S") if n.registered_at else "-"
        click.echo(
            f"{n.create_index if n.create_index is not None else '-':>6}  {n.name:<24} "
            f"{n.cluster_address:<28} {when}"
        )


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """KEY=VALUE / KEY= arguments as a dict (pure); ValueError (one sentence) for a bad one."""
    from registry import check_metadata

    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"'{pair[:80]}' is not KEY=VALUE (or KEY= to remove the key).")
        if key in out:
            raise ValueError(f"The key '{key[:80]}' is given twice.")
        try:
            check_metadata({key: value})
        except ValueError as exc:
            raise ValueError(f"'{pair[:80]}' is not KEY=VALUE: {exc}.") from None
        out[key] = value
    return out


def shadowed(operator: dict[str, str], record: dict[str, str]) -> list[str]:
    """The operator's keys that a node's record carries with another value (pure): the
    node registers its own value for them, which wins (registry.merge_metadata)."""
    return sorted(k for k, v in operator.items() if k in record and record[k] != v)


@registry.command("metadata")
@click.argument("name")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE | KEY=]...")
@click.option(
    "--clear",
    is_flag=True,
    help="Remove every key first: alone it clears the node's metadata, with KEY=VALUE it "
    "replaces it.",
)
@_registry_options
def metadata(
    name: str,
    pairs: tuple[str, ...],
    clear: bool,
    registry_url: str,
    registry_service: str,
    token: str | None,
    timeout: str,
    as_json: bool,
) -> None:
    """Show or change the metadata an operator gives node NAME in the registry.

    \b
      nimsforest registry metadata n1                     show it
      nimsforest registry metadata n1 zone=eu-1a rack=7   set keys (others are kept)
      nimsforest registry metadata n1 rack=               remove a key
      nimsforest registry metadata n1 --clear             remove every key
      nimsforest registry metadata n1 --clear zone=eu-1a  replace every key

    The registry keeps it apart from what the node registers, before the node registers
    and after it leaves. The node's record carries both, the node's own keys winning
    (except an empty value): the command says on stderr which keys a registered node
    gives its own value. A node without NIMSFOREST_ZONE takes its zone from the key
    'zone' when it starts, so restart it to apply a new zone. With a file:// registry the
    keys are those of the node's entry in registry.json, which must exist.
    """
    from nimsforest.settings import ZONE_KEY
    from registry import OperatorMetadata, RegistryError, check_name

    try:
        check_name(name)
    except ValueError as exc:
        raise click.UsageError(f"{exc}.") from None
    try:
        changes = parse_pairs(pairs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    reg = _open(registry_url, registry_service, token, timeout)

    async def act() -> tuple[OperatorMetadata, list[str]]:
        async with reg:
            if clear and not changes:
                await reg.clear_node_metadata(name)
                return OperatorMetadata(service=registry_service, name=name), []
            if clear or changes:
                kept = await reg.set_node_metadata(name, changes, merge=not clear)
            else:
                kept = await reg.node_metadata(name)
            try:
                listed = await reg.list_nodes()
            except RegistryError:  # the change is made; only the note on its effect is lost
                return kept, []
            record = next((n for n in listed if n.name == name), None)
            return kept, shadowed(kept.metadata, record.metadata if record else {})

    try:
        result, hidden = asyncio.run(act())
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(result.model_dump_json(indent=2))
    elif not result.metadata:
        click.echo(f"Node {name} has no operator metadata in service {registry_service}.")
    else:
        for key, value in sorted(result.metadata.items()):
            click.echo(f"{key}={value}")
    if hidden:
        click.echo(
            f"Node {name} registers its own {', '.join(hidden)}: its record carries the "
            "node's value instead (a node's own keys win; for the zone: NIMSFOREST_ZONE).",
            err=True,
        )
    if ZONE_KEY in changes or clear:
        click.echo(
            f"Node {name} reads its zone when it starts: restart it (one node at a time) "
            "for a new zone to take effect.",
            err=True,
        )
