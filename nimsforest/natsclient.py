"""The node's nats-py client: nats-py's own, with flush() kept in order and a cheaper
header path.

**flush() in order.** nats-py 2.16 writes a flush's PING straight to the socket while the
SUB (or PUB) before it still waits in the client's pending buffer for the flusher task, so
the server can answer the PONG before it has seen the SUB: `subscribe(); flush()` returns
with the subscription not yet in place, and a message another connection publishes then
is not delivered (about 1 in 30 on a local server; the server's trace shows PING, PONG,
then SUB). This client queues the PING behind what is pending, as the Go client does, so
a flush's PONG means the server has everything written before it.

Every message the forest stores carries three or four header lines (its message id, its
hop, its trace context), and nats-py 2.16 spends about 2.2 us sending a line (a regular
expression on the name, two strips, a translate and two encodes) and 1.4 us receiving one
(the name checked character by character): about 10% of the forest's instructions per
event, measured with callgrind (docs/FOREST.md, Benchmark). This client sends and
receives the same bytes and the same dicts for less:

- sending, each distinct name is checked once (the same regular expression, cached), a
  value is translated only when it holds a CR or LF, and the block is encoded once;
- receiving, each distinct raw name is decoded and checked once (cached).

PRIVATE API: `Client._send_ping`, `Client._send_publish` and `Client._parse_header_lines`
are nats-py's internals. The overrides are used only while nats-py's own methods are the
ones they were written against (their source is fingerprinted); with any other version
`Client` is nats-py's own, unchanged. tests/test_natsclient.py holds the bytes on the wire
and the parsed dicts equal to nats-py's for generated headers and a flush's PING behind its
SUB, and fails when the fingerprint no longer matches, so an upgrade of nats-py is looked
at rather than slowed down silently.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from typing import Any

import nats.aio.client as _nats
from nats import errors
from nats.protocol import command as _command

# sha256 of nats-py 2.16.0's sources of the methods overridden below
WRITTEN_AGAINST = {
    "_send_ping": "d57b2f820443afb4ed739d9c0bf771f3881c6a7acd9ded3f3db7edc60305d682",
    "_send_publish": "300b534f8eabee7476d04f56e0dc8bc297c7aca425f7cf613315296d76dd9be0",
    "_parse_header_lines": "049cf69148e0bb4f6d897648c92c3a3816df04091fa345f01b93316bbc4d187f",
}
_KEPT = 1024  # distinct header names remembered (a flood of names only costs a re-check)


def fingerprint(name: str) -> str:
    """The sha256 of nats-py's own `Client.<name>` source ("" when it cannot be read)."""
    try:
        source = inspect.getsource(getattr(_nats.Client, name))
    except (OSError, TypeError, AttributeError):
        return ""
    return hashlib.sha256(source.encode()).hexdigest()


def matches() -> bool:
    """Whether the installed nats-py's methods are those the overrides mirror."""
    return all(want and fingerprint(name) == want for name, want in WRITTEN_AGAINST.items())


_names_ok: set[str] = set()
_raw_names: dict[bytes, str | None] = {}


class NodeClient(_nats.Client):
    """nats-py's Client whose flush keeps order and whose header lines cost less (the
    same bytes, the same dicts)."""

    async def _send_ping(self, future: asyncio.Future[Any] | None = None) -> None:
        # nats-py writes PING to the transport directly, ahead of the pending commands
        if future is None:
            future = asyncio.get_running_loop().create_future()
        self._pongs.append(future)
        await self._send_command(_nats.PING_PROTO)
        await self._flush_pending()

    async def _send_publish(
        self,
        subject: str,
        reply: str,
        payload: bytes,
        payload_size: int,
        headers: dict[str, Any] | None,
    ) -> None:
        if subject == "":
            raise errors.BadSubjectError
        if headers is None:
            pub_cmd = _command.pub_cmd(subject, reply, payload)
        else:
            parts = ["NATS/1.0\r\n"]
            for k, v in headers.items():
                key = k.strip()
                if not key:
                    continue  # as nats-py: an empty name is skipped
                if key not in _names_ok:
                    if not _nats._HEADER_KEY_RE.fullmatch(key):
                        raise errors.BadHeaderError(key)
                    if len(_names_ok) >= _KEPT:
                        _names_ok.clear()
                    _names_ok.add(key)
                value = v.strip()
                if "\r" in value or "\n" in value:
                    value = value.translate(_nats._HEADER_VALUE_NEWLINES)
                parts.append(f"{key}: {value}\r\n")
            parts.append("\r\n")
            pub_cmd = _command.hpub_cmd(subject, reply, "".join(parts).encode(), payload)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(pub_cmd)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in raw.split(b"\r\n"):
            if not line:
                continue
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            try:
                key = _raw_names[name]
            except KeyError:
                key = _name(name)
                if len(_raw_names) >= _KEPT:
                    _raw_names.clear()
                _raw_names[name] = key
            if key is not None:
                out[key] = value.strip().decode("utf-8", "replace")
        return out


def _name(raw: bytes) -> str | None:
    """nats-py's reading of a header name: None for one it skips (not ASCII, or with
    whitespace inside)."""
    try:
        key = raw.strip().decode("ascii")
    except UnicodeDecodeError:
        return None
    return None if any(c.isspace() for c in key) else key


ACTIVE = matches()
Client: type[_nats.Client] = NodeClient if ACTIVE else _nats.Client
if not ACTIVE:
    logging.getLogger("nimsforest.natsclient").info(
        "nats-py's methods are not those the ordered flush and the cheaper header path "
        "were written against (nats-py 2.16.0); its own are used")


async def connect(servers: str | list[str] = "nats://localhost:4222", **options: Any) -> _nats.Client:
    """`nats.connect` on the node's client: what the node, `nimsforest test` and the
    stack's mirror connect with."""
    nc = Client()
    await nc.connect(servers, **options)
    return nc


__all__ = ["ACTIVE", "WRITTEN_AGAINST", "Client", "NodeClient", "connect", "fingerprint",
           "matches"]
