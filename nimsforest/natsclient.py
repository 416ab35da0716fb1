"""The node's nats-py client: nats-py's own, with a cheaper header path.

Every message the forest stores carries three or four header lines (its message id, its
hop, its trace context), and nats-py 2.16 spends about 2.2 us sending a line (a regular
expression on the name, two strips, a translate and two encodes) and 1.4 us receiving one
(the name checked character by character): about 10% of the forest's instructions per
event, measured with callgrind (docs/FOREST.md, Benchmark). This client sends and
receives the same bytes and the same dicts for less:

- sending, each distinct name is checked once (the same regular expression, cached), a
  value is translated only when it holds a CR or LF, and the block is encoded once;
- receiving, each distinct raw name is decoded and checked once (cached).

PRIVATE API: `Client._send_publish` and `Client._parse_header_lines` are nats-py's
internals. The overrides are used only while nats-py's own methods are the ones they were
written against (their source is fingerprinted); with any other version `Client` is
nats-py's own, unchanged. tests/test_natsclient.py holds the bytes on the wire and the
parsed dicts equal to nats-py's for generated headers, and fails when the fingerprint no
longer matches, so an upgrade of nats-py is looked at rather than slowed down silently.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from typing import Any

import nats.aio.client as _nats
from nats import errors
from nats.protocol import command as _command

# sha256 of nats-py 2.16.0's Client._send_publish and Client._parse_header_lines sources
WRITTEN_AGAINST = {
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
    """Whether the installed nats-py's header methods are those the overrides mirror."""
    return all(want and fingerprint(name) == want for name, want in WRITTEN_AGAINST.items())


_names_ok: set[str] = set()
_raw_names: dict[bytes, str | None] = {}


class FastHeadersClient(_nats.Client):
    """nats-py's Client whose header lines cost less (the same bytes, the same dicts)."""

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
Client: type[_nats.Client] = FastHeadersClient if ACTIVE else _nats.Client
if not ACTIVE:
    logging.getLogger("nimsforest.natsclient").info(
        "nats-py's header methods are not those the cheaper header path was written "
        "against (nats-py 2.16.0); its own are used")

__all__ = ["ACTIVE", "WRITTEN_AGAINST", "Client", "FastHeadersClient", "fingerprint", "matches"]
