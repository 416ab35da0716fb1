"""The node's client sends the bytes and parses the dicts nats-py's own does, for any
headers (generated); its flush's PING goes after what was pending (nats-py's own goes
first); it is in use with the nats-py installed."""

from __future__ import annotations

import asyncio
import string
from typing import Any

import nats
import nats.aio.client as stock
from hypothesis import given, settings
from hypothesis import strategies as st

from nimsforest import natsclient
from tests.conftest import PlainNats
from tests.support import eventually

NAMES = st.one_of(
    st.sampled_from(["traceparent", "Nimsforest-Hop", "Nats-Msg-Id", "KV-Operation"]),
    st.text(alphabet=string.ascii_letters + string.digits + "-_.!#$%&'*+^`|~", min_size=1),
    st.text(max_size=12),  # anything: spaces, colons, CR/LF, non-ASCII, empty
)
VALUES = st.one_of(st.text(max_size=40), st.sampled_from(["a\r\nPUB x 1", " padded ", "é"]))


async def _sent(client: stock.Client, headers: dict[str, str]) -> bytes | type[Exception]:
    """What `client` would write for one publish with `headers` (or the error it raises)."""
    written: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        written.append(cmd)

    client._send_command = capture  # type: ignore[method-assign]  # the socket's place
    try:
        await client._send_publish("s.x", "r.y", b"data", 4, headers)
    except Exception as exc:  # noqa: BLE001 - compared below
        return type(exc)
    return b"".join(written)


def test_the_node_s_client_is_in_use_with_the_installed_nats_py() -> None:
    """When this fails, nats-py's methods that nimsforest/natsclient.py overrides changed:
    compare them with the overrides (nats-py may have fixed its flush), mend those, then
    update WRITTEN_AGAINST."""
    assert natsclient.matches(), {n: natsclient.fingerprint(n) for n in natsclient.WRITTEN_AGAINST}
    assert natsclient.Client is natsclient.NodeClient


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(NAMES, VALUES, max_size=5))
def test_a_publish_writes_what_nats_py_writes(headers: dict[str, str]) -> None:
    ours = asyncio.run(_sent(natsclient.NodeClient(), headers))
    theirs = asyncio.run(_sent(stock.Client(), headers))
    assert ours == theirs
    # and again, now that its names are known (the cache must not change the answer)
    assert asyncio.run(_sent(natsclient.NodeClient(), headers)) == theirs


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=30),
    st.builds(lambda k, v: k + b":" + v, st.binary(max_size=12), st.binary(max_size=20)),
    st.sampled_from([b"traceparent: 00-ab-01", b"Nimsforest-Hop: tree:t@n1 RIVER:7",
                     b" Spaced : x", b"na me: v", b"\xc3\xa9: v", b"k:\t v \t"]),
), max_size=6))
def test_a_header_block_parses_as_nats_py_parses_it(lines: list[bytes]) -> None:
    raw = b"\r\n".join(lines) + b"\r\n\r\n"
    expected = stock.Client._parse_header_lines(raw)
    assert natsclient.NodeClient._parse_header_lines(raw) == expected
    assert natsclient.NodeClient._parse_header_lines(raw) == expected  # names cached


async def test_headers_go_through_a_real_server_both_ways(plain_nats: PlainNats) -> None:
    ours = await natsclient.connect(plain_nats.url)
    theirs = await nats.connect(plain_nats.url)
    sent = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "Nimsforest-Hop": "tree:contacts@n1 RIVER:7", "X-Value": " a\nb ", "X-Text": "é"}
    try:
        for sender, receiver in ((ours, theirs), (theirs, ours)):
            got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

            async def on(msg: Any, got: asyncio.Future[Any] = got) -> None:
                got.set_result(msg)

            sub = await receiver.subscribe("h.t", cb=on)
            await receiver.flush()
            # nats-py's own flush can return before its SUB is sent (below): wait for the server
            await eventually(lambda: "h.t" in plain_nats.subscribed(), timeout=10,
                             what="the server to have the subscription")
            await sender.publish("h.t", b"x", headers=sent)
            msg = await asyncio.wait_for(got, 5)
            await sub.unsubscribe()
            assert msg.headers == {**sent, "X-Value": "a b"}  # trimmed, the LF a space
    finally:
        await ours.close()
        await theirs.close()


class _Wire:
    """What a client writes to its socket, in order (the transport's own calls)."""

    def __init__(self, client: stock.Client) -> None:
        self.written: list[bytes] = []
        transport = client._transport
        write, writelines = transport.write, transport.writelines

        def on_write(data: bytes) -> None:
            self.written.append(bytes(data))
            write(data)

        def on_writelines(lines: list[bytes]) -> None:
            self.written.extend(bytes(line) for line in lines)
            writelines(lines)

        transport.write = on_write  # type: ignore[method-assign]
        transport.writelines = on_writelines  # type: ignore[method-assign]

    def order(self) -> list[bytes]:
        return [line.split(b" ")[0].strip() for line in self.written]


async def test_a_flush_is_answered_after_the_subscription_before_it(plain_nats: PlainNats) -> None:
    """subscribe(); flush() means the server has the subscription: the PING goes after
    the SUB, so a message another connection publishes then is delivered."""
    ours = await natsclient.connect(plain_nats.url)
    theirs = await nats.connect(plain_nats.url)
    try:
        wire = _Wire(ours)
        got: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def on(msg: Any) -> None:
            got.set_result(msg.data)

        await ours.subscribe("o.t", cb=on)
        await ours.flush()
        assert wire.order() == [b"SUB", b"PING"]
        await theirs.publish("o.t", b"right after")
        assert await asyncio.wait_for(got, 5) == b"right after"

        # why: nats-py's own writes the PING ahead of the SUB still pending, so the server
        # can answer before it has the subscription (and drop what is published meanwhile)
        stock_wire = _Wire(theirs)
        await theirs.subscribe("o.u")
        await theirs.flush()
        assert stock_wire.order() == [b"PING", b"SUB"]
    finally:
        await ours.close()
        await theirs.close()
