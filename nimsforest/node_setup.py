"""What a node derives from its settings before it starts anything (no heavy imports):
plain functions, used by the modes (nimsforest.modes)."""

from __future__ import annotations

import os

from natsembed import EmbeddedConfig, RestartPolicy, Timeouts, find_nats_server
from nimsforest import __version__
from nimsforest.settings import ZONE_KEY, Settings


def embedded_config(
    settings: Settings, *, witness: bool, routes: tuple[str, ...] = (), authorize_routes: bool = True
) -> EmbeddedConfig:
    return EmbeddedConfig(
        name=settings.node_name,
        data_dir=settings.data_dir,
        binary=find_nats_server(settings.nats_server_bin),
        cluster_name=settings.cluster_name,
        bind=settings.bind_address,
        advertise=settings.advertise_address,
        client_port=settings.client_port,
        cluster_port=settings.cluster_port,
        monitor_port=settings.monitor_port,
        routes=routes,
        witness=witness,
        extra_tags=tuple(settings.server_tags),
        reserved_ports=(settings.api_host_port[1],),  # the management API binds it after NATS
        jetstream_max_mem=settings.jetstream_max_mem,
        jetstream_max_file=settings.jetstream_max_file,
        cluster_secret=settings.cluster_secret.get_secret_value() if settings.cluster_secret else None,
        authorize_routes=authorize_routes,
        policy=RestartPolicy(max_restarts=settings.nats_max_restarts, window=settings.nats_restart_window),
        timeouts=Timeouts(start=settings.nats_start_timeout, interrupt=settings.nats_stop_timeout),
    )


def machine_metadata(cluster_name: str, zone: str | None = None) -> dict[str, str]:
    """What a node tells the registry about itself and its machine (used by `grow`), with
    its zone when NIMSFOREST_ZONE sets it (an entry's `zone` is otherwise the registry's
    to give: the node reads it, settings.choose_zone)."""
    import psutil

    meta = {
        "version": __version__,
        "cluster": cluster_name,
        "ram_bytes": str(psutil.virtual_memory().total),
        "cpus": str(os.cpu_count() or 1),
    }
    if zone:
        meta[ZONE_KEY] = zone
    return meta
