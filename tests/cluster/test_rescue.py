"""Quorum rescue with real nats-servers, real reconcile loops and an in-memory registry.

A founder and its witness disappear from a meta group of four ({a, a's witness, b, c})
before the witness was retired: one machine held two of four votes, so b and c alone
have no quorum. Their reconcile loops must prove a and its witness gone, rescue the
quorum (one of them asks, every server applies it), and remove the lost members.
"""

from __future__ import annotations

import asyncio
import os
import signal

from cluster import ClusterManager, Tuning
from natsembed import ProcessState, RestartPolicy, Timeouts
from nimsforest.connection import ConnectionManager, ConnectionOptions
from nimsforest.observer import NatsObserver
from registry import NodeInfo, open_registry
from tests.support import EmbeddedFactory, eventually, free_port

SERVER = {"cluster_secret": "s", "timeouts": Timeouts(start=30, lame_duck=2, interrupt=5)}


async def test_founder_and_its_witness_lost_from_a_group_of_four(
    embedded: EmbeddedFactory
) -> None:
    a = embedded("a", policy=RestartPolicy(max_restarts=0), **SERVER)  # what is killed stays dead
    await a.start()
    b = embedded("b", witness=False, routes=(a.cluster_address,), **SERVER)
    await b.start()
    c = embedded("c", witness=False, routes=(a.cluster_address, b.cluster_address), **SERVER)
    await c.start()
    await b.set_routes([a.cluster_address, c.cluster_address])

    async def four() -> bool:
        meta = (await b.monitor.jsz()).meta_cluster
        return meta is not None and meta.cluster_size == 4 and bool(meta.leader)

    await eventually(four, what="a meta group of four (a, its witness, b, c)")
    witness = a.witness_name
    assert witness is not None
    # The founder's machine dies: its server and its witness at once (kill -9).
    for snap in (a.snapshot().node, a.snapshot().witness):
        assert snap is not None and snap.pid is not None
        os.kill(snap.pid, signal.SIGKILL)
    await eventually(lambda: a.node.state is ProcessState.FAILED, what="a's server dead and not restarted")

    url = f"memory://rescue-{free_port()}"
    managers, conns, registries, beats = [], [], [], []
    try:
        for e in (b, c):
            reg = open_registry(url, service="nimsforest", heartbeat_interval=1.0)
            await reg.register(NodeInfo(name=e.name, cluster_address=e.cluster_address, node_id=e.name))
            beats.append(asyncio.create_task(reg.run_heartbeat()))
            conn = ConnectionManager([e.system_url], ConnectionOptions(retry_attempts=2, retry_interval=0.2),
                                     user=e.credentials.app_user, password=e.credentials.app_password)
            await conn.connect()
            # min_quorum=2: the survivors are two, below the default floor of three
            tuning = Tuning(grace=1, rescue_after=1, min_quorum=2)
            m = ClusterManager(embedded=e, observer=NatsObserver(e.name, conn, embedded=e),
                               registry=reg, tuning=tuning, interval=0.5)
            registries.append(reg)
            conns.append(conn)
            managers.append(m)

        said: list[str] = []

        async def cycles() -> bool:
            for m in managers:
                said.append(await m.cycle())
            meta = (await b.monitor.jsz()).meta_cluster
            return (meta is not None and meta.leader in ("b", "c") and meta.cluster_size == 2
                    and set(meta.members) == {"c"})

        await eventually(cycles, timeout=90, interval=0.5, what="b and c rescue the quorum and remove a")
        rescues = [x for x in said if "quorum rescued" in x]
        assert rescues == [f"quorum rescued (2 survivor(s)) after losing a, {witness}"]  # b asked, once
        assert b.witness_name is None and c.witness_name is None  # two nodes: no witness needed
    finally:
        for beat in beats:
            beat.cancel()
        for conn in conns:
            await conn.close()
        for reg in registries:
            await reg.close()
