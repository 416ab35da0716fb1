"""A node's NATS client comes home to its own nats-server (real servers, kill -9)."""

from __future__ import annotations

import os
import signal

from natsembed import ProcessState
from nimsforest.connection import ConnectionEvent, ConnectionManager, ConnectionOptions
from tests.support import EmbeddedFactory, eventually, routed_servers


async def test_a_nodes_client_reconnects_to_its_own_server_not_to_a_peer(embedded: EmbeddedFactory) -> None:
    home, peer = await routed_servers(embedded, "c", count=2)
    conn = ConnectionManager([home.system_url], ConnectionOptions(reconnect_wait=0.1, stay_on_configured=True),
                             user=home.credentials.app_user, password=home.credentials.app_password)
    servers: list[str | None] = []
    conn.on_event(lambda e: servers.append(conn.snapshot().server) if e is ConnectionEvent.RECONNECTED else None)
    await conn.connect()
    try:
        # the peer is advertised to the client: a plain reconnect could go there
        await eventually(lambda: any(u.port == peer.config.client_port for u in conn.nc.discovered_servers),
                         what="the peer's client URL advertised")
        old = home.node.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        await eventually(lambda: home.node.state is ProcessState.READY and home.node.pid not in (None, old),
                         timeout=30, what="the home server restarted")
        await eventually(lambda: conn.is_connected and servers, timeout=30, what="the client reconnected")
        assert servers == [f"127.0.0.1:{home.config.client_port}"]
        assert conn.snapshot().server == f"127.0.0.1:{home.config.client_port}"
    finally:
        await conn.close()
