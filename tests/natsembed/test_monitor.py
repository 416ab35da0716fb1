"""MonitorClient against real local HTTP servers: a nats-server's answers are covered by
test_supervisor; here the failures (refused, 503, no JSON, a hang) and what the node's
start-up path imports."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from natsembed import MonitorClient, MonitorUnavailable
from tests.support import free_port

Answer = bytes | None  # None: hang


async def _serve(answer: Answer, stop: asyncio.Event) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if answer is None:
            await stop.wait()
        else:
            writer.write(answer)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.fixture
async def http() -> AsyncIterator[Callable[[Answer], Awaitable[str]]]:
    """`await http(raw_answer)` -> the base URL of a server that answers every request so."""
    servers: list[asyncio.AbstractServer] = []
    stop = asyncio.Event()

    async def make(answer: Answer) -> str:
        server = await _serve(answer, stop)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield make
    stop.set()
    for server in servers:
        server.close()


def _response(status: str, body: bytes, *, chunked: bool = False) -> bytes:
    if chunked:
        framing = b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        framing = b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    return b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: application/json\r\n" + framing


async def test_reads_typed_answers_whatever_the_framing(http: Callable[[Answer], Awaitable[str]]) -> None:
    body = b'{"server_name": "n1", "streams": 3, "meta_cluster": {"leader": "n1", "cluster_size": 2}}'
    for chunked in (False, True):
        monitor = MonitorClient(await http(_response("200 OK", body, chunked=chunked)))
        jsz = await monitor.jsz(streams=True)
        assert (jsz.server_name, jsz.streams) == ("n1", 3)
        assert jsz.meta_cluster is not None and jsz.meta_cluster.leader == "n1"
        assert await monitor.healthz(js_meta_only=True)


async def test_a_refused_port_is_unhealthy_and_one_sentence() -> None:
    monitor = MonitorClient(f"http://127.0.0.1:{free_port()}")
    assert not await monitor.healthz()
    with pytest.raises(MonitorUnavailable, match=r"^nats-server monitoring at http://127\.0\.0\.1:\d+/jsz did not answer: "):
        await monitor.jsz()


async def test_an_error_status_or_no_json_raises(http: Callable[[Answer], Awaitable[str]]) -> None:
    failing = MonitorClient(await http(_response("503 Service Unavailable", b'{"error": "no leader"}')))
    assert not await failing.healthz(js_meta_only=True)
    with pytest.raises(MonitorUnavailable, match=r"/varz answered 503$"):
        await failing.varz()
    garbage = MonitorClient(await http(_response("200 OK", b"<html>")))
    with pytest.raises(MonitorUnavailable, match=r"/routez answered with no JSON$"):
        await garbage.routez()


async def test_leads_meta_is_the_leader_only_answer_of_jsz(http: Callable[[Answer], Awaitable[str]]) -> None:
    # /jsz?leader-only=true: 200 on the meta leader once JetStream acts as one, 400 elsewhere
    leading = MonitorClient(await http(_response("200 OK", b'{"server_name": "n1"}')))
    assert await leading.leads_meta()
    other = MonitorClient(await http(_response("400 Bad Request", b"not leader")))
    assert not await other.leads_meta()
    assert not await MonitorClient(f"http://127.0.0.1:{free_port()}").leads_meta()


async def test_a_hanging_server_is_bounded_by_the_timeout(http: Callable[[Answer], Awaitable[str]]) -> None:
    monitor = MonitorClient(await http(None), timeout=0.2)
    assert not await monitor.healthz()
    with pytest.raises(MonitorUnavailable, match="no answer within the timeout"):
        await monitor.jsz()


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="http"):
        MonitorClient("nats://127.0.0.1:4222")


def test_the_start_up_path_imports_no_http_client_library() -> None:
    """What a standalone node imports to start (its heavy half included) and a monitoring
    read leave httpx, httpcore and trio unimported: they cost 0.1-0.3 s of CPU (trio comes
    with a test extra, selenium), paid by every start when the monitor client used httpx."""
    code = (
        "import asyncio, sys\n"
        "import nimsforest.cli, nimsforest.node, nimsforest.assembly\n"
        "from natsembed import MonitorClient\n"
        f"asyncio.run(MonitorClient('http://127.0.0.1:{free_port()}').healthz())\n"
        "print(sorted(m for m in ('httpx', 'httpcore', 'trio') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
