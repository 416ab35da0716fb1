"""How a node reaches NATS, one strategy per mode.

    StandaloneMode  its own nats-server, clustered from the first boot, with a witness
    ClusterMode     the same after the registry's founder rule, plus the reconcile loop
                    and the registry membership (nimsforest.mode_cluster)
    SidecarMode     an existing NATS (NATS_URL); clustering belongs to it

`open(stack)` starts what the mode needs and returns the node's connected `Nats` with
the heavy half (`Assembly`), registering every teardown on `stack`; `start_loops(tasks)`
starts the loops the mode runs beside the observer. The other hooks answer what the
mode knows for the health documents, with no-op defaults here.

This module is also the one place of the node's start-up-time lazy imports. A node spawns
nats-server before it imports the heavy half of NimsForest (nats-py, the forest, the
control plane, the web stack: about half a second): `import_heavy` loads
`nimsforest.assembly`, which imports all of it, in a thread while the server boots; and
`make_mode` imports the cluster mode (the registry client, the reconcile loop) only for
a cluster node. Nothing else in the node imports inside a function.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from natsembed import EmbeddedNats, find_nats_server
from nimsforest import __version__
from nimsforest.health import NodeMode
from nimsforest.node_setup import embedded_config
from nimsforest.settings import Settings, redact
from nimsforest.tasks import TaskOwner

if TYPE_CHECKING:
    from pathlib import Path

    from cluster import ClusterStatus
    from nimsforest.assembly import Assembly, Nats
    from nimsforest.forest import ForestConfig
    from registry import RegistryStatus

log = logging.getLogger("nimsforest")


def import_heavy() -> type[Assembly]:
    """The heavy half of a node; call it in a thread while nats-server boots."""
    module = importlib.import_module("nimsforest.assembly")
    log.debug("Imported the forest and the web stack")
    assembly: type[Assembly] = module.Assembly
    return assembly


def load_forest_config(path: Path | None) -> tuple[Path, ForestConfig]:
    """forest.yaml at `path`, or the demo forest's (None), read and validated; raises
    ForestConfigError when it cannot be read, is not YAML or not a forest.yaml at all (an
    unknown section). A component whose settings are invalid is left out and shown
    FAILED; scripts, prompts and brains are compiled when the forest applies them, and
    one that does not compile is FAILED alone: the node runs the rest. (Only a node with a
    forest configuration imports the forest before its nats-server is spawned.)"""
    forest = importlib.import_module("nimsforest.forest")
    chosen: Path = forest.demo_config_path() if path is None else path
    config: ForestConfig = forest.read_forest_config(chosen, tolerant=True)
    return chosen, config


def make_mode(mode: NodeMode, settings: Settings) -> Mode:
    """The strategy of `mode` (the cluster mode's imports are paid by cluster nodes only)."""
    if mode is NodeMode.CLUSTER:
        made: Mode = importlib.import_module("nimsforest.mode_cluster").ClusterMode(settings)
        return made
    return SidecarMode(settings) if mode is NodeMode.SIDECAR else Mode(settings)


class Mode:
    """The base strategy: an embedded nats-server with a witness (standalone)."""

    kind = NodeMode.STANDALONE

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def preflight(self) -> None:
        """Checks that need nothing started (the nats-server binary is there)."""
        find_nats_server(self.settings.nats_server_bin)  # NatsBinaryNotFound

    async def open(self, stack: contextlib.AsyncExitStack) -> tuple[Nats, Assembly]:
        s = self.settings
        log.info("Starting NimsForest %s in %s mode as node %s", __version__, self.kind.value,
                 s.node_name)
        embedded, assembly = await start_embedded(
            stack, s, witness=True, routes=(), authorize=True
        )
        return await assembly.connect_embedded(stack, embedded), assembly

    def start_loops(
        self, tasks: TaskOwner, nats: Nats, on_replicas: Callable[[int], None]
    ) -> None:
        """No loops beside the observer."""

    def cluster_status(self) -> ClusterStatus | None:
        return None

    def registry_status(self) -> RegistryStatus | None:
        return None

    @property
    def reconcile_interval(self) -> float:
        return self.settings.reconcile_interval

    @property
    def nats_url(self) -> str | None:
        """The NATS the node uses when it is not its own (password hidden)."""
        return None


StandaloneMode = Mode


class SidecarMode(Mode):
    kind = NodeMode.SIDECAR

    def preflight(self) -> None:
        """A sidecar runs no nats-server: nothing to find."""

    async def open(self, stack: contextlib.AsyncExitStack) -> tuple[Nats, Assembly]:
        s = self.settings
        log.info("Starting NimsForest %s in sidecar mode as node %s, with NATS at %s",
                 __version__, s.node_name, self.nats_url)
        assembly = (await asyncio.to_thread(import_heavy))(s)
        return await assembly.connect_sidecar(stack), assembly

    @property
    def nats_url(self) -> str | None:
        return redact(self.settings.nats_url or "")


async def start_embedded(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    *,
    witness: bool,
    routes: tuple[str, ...],
    authorize: bool,
) -> tuple[EmbeddedNats, Assembly]:
    """Start the node's own nats-server; the heavy half is imported in a thread once the
    server is spawned (so the imports do not compete with the spawn itself)."""
    s = settings
    embedded = EmbeddedNats(
        embedded_config(s, witness=witness, routes=routes, authorize_routes=authorize)
    )
    stack.push_async_callback(embedded.close)
    stack.push_async_callback(embedded.stop)  # lame duck first; runs before close
    nats_start = asyncio.ensure_future(embedded.start())
    spawned = asyncio.ensure_future(embedded.node.spawned.wait())
    try:
        await asyncio.wait([nats_start, spawned], return_when=asyncio.FIRST_COMPLETED)
        began = time.monotonic()
        heavy = asyncio.ensure_future(asyncio.to_thread(import_heavy))
        try:
            await nats_start
        finally:
            assembly_type = await heavy
    finally:
        spawned.cancel()
        if not nats_start.done():
            nats_start.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await nats_start
    log.debug("nats-server and the imports done in %.2fs", time.monotonic() - began)
    extra = f" (witness {embedded.witness_name})" if embedded.witness_name else ""
    log.info("NATS server %s ready: clients at nats://%s, cluster %s at %s%s", s.node_name,
             embedded.client_address, s.cluster_name, embedded.cluster_address, extra)
    return embedded, assembly_type(s)


__all__ = [
    "Mode",
    "SidecarMode",
    "StandaloneMode",
    "import_heavy",
    "load_forest_config",
    "make_mode",
    "start_embedded",
]
