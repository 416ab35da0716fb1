"""Soil: current state in the KV bucket SOIL, written with optimistic locking.

Each Soil key holds the latest JSON value of one entity. Every write made by the
Decomposer carries `Nats-Expected-Last-Subject-Sequence` (the key's revision it read, 0
for a missing key), so two writers can never both succeed from the same revision, and is
stored under the message id `soil:<humus seq>` (the HUMUS sequence it applied), which
the stored value keeps among its headers: an entry whose sequence is not newer than the
key's recorded one is known to be applied already. JetStream checks the id before the
expected revision, so a write sent again (its first send unanswered: a KV_SOIL leader
that froze or died) is dropped as a duplicate if the first was stored after all, and
stored by the new leader otherwise. Values written by earlier versions name the sequence
in a header of its own, `Nimsforest-Humus-Seq`, read too.

Keys are written through `$KV.SOIL.<key>` directly (not nats-py's KV API) because the
API cannot attach headers; reads use direct get, which returns them. Values stay plain
JSON, readable with any KV client (`nats kv get SOIL <key>`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import APIError, NotFoundError

from nimsforest.forest import delivery
from nimsforest.forest.delivery import Output
from nimsforest.forest.leaf import dumps, loads, soil_key

if TYPE_CHECKING:
    from nats.js import JetStreamContext

BUCKET = "SOIL"
STREAM = f"KV_{BUCKET}"
# where values stored by earlier versions name their Humus sequence: read, no longer
# written (the message id says it; one header line fewer on every Soil write)
SEQ_HEADER = "Nimsforest-Humus-Seq"
_MSG_ID_PREFIX = "soil:"
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
SOIL_PREFIX = f"$KV.{BUCKET}."
WRONG_LAST_SEQUENCE = 10071


class SoilConflict(Exception):
    """The key changed since it was read (optimistic lock lost)."""


def humus_seq_of(headers: Mapping[str, str] | None) -> int | None:
    """The HUMUS sequence a stored Soil value applied (its message id `soil:<seq>`, or an
    older value's `Nimsforest-Humus-Seq`); None for a value the Decomposer did not write."""
    h = headers or {}
    msg_id = h.get("Nats-Msg-Id", "")
    seq = msg_id[len(_MSG_ID_PREFIX):] if msg_id.startswith(_MSG_ID_PREFIX) else h.get(
        SEQ_HEADER, "")
    return int(seq) if seq.isdigit() else None


@dataclass(frozen=True, slots=True)
class SoilEntry:
    key: str
    value: Any  # None when deleted
    revision: int  # 0 when the key never existed
    humus_seq: int  # last HUMUS sequence applied to this key (0 if none)
    deleted: bool = False


class Soil:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def dig(self, entity: str) -> SoilEntry:
        """The entity's current entry (revision 0 when it never existed)."""
        key = soil_key(entity)
        try:
            raw = await self._js.get_msg(STREAM, subject=f"{SOIL_PREFIX}{key}", direct=True)
        except NotFoundError:
            return SoilEntry(key=key, value=None, revision=0, humus_seq=0)
        headers = raw.headers or {}
        op = headers.get("KV-Operation")
        deleted = op in ("DEL", "PURGE")
        value = None if deleted or not raw.data else loads(raw.data)
        return SoilEntry(
            key=key,
            value=value,
            revision=int(raw.seq or 0),
            humus_seq=humus_seq_of(headers) or 0,
            deleted=deleted,
        )

    @staticmethod
    def write(
        key: str, value: Any, expected_revision: int, humus_seq: int = 0, *, delete: bool = False
    ) -> Output:
        """The one encoding of a Soil write: the KV subject, the JSON value (empty for a
        delete, marked `KV-Operation: DEL`), the expected revision, and the message id
        derived from the Humus sequence."""
        headers = {EXPECTED_LAST: str(expected_revision)}
        msg_id = None
        if humus_seq:
            msg_id = f"{_MSG_ID_PREFIX}{humus_seq}"
        if delete:
            headers["KV-Operation"] = "DEL"
            return Output(f"{SOIL_PREFIX}{key}", b"", msg_id, headers)
        return Output(f"{SOIL_PREFIX}{key}", dumps(value), msg_id, headers)

    async def bury(
        self,
        entity: str,
        value: Any,
        *,
        expected_revision: int,
        humus_seq: int = 0,
        delete: bool = False,
    ) -> int:
        """Write (or delete) the entity if its revision is still `expected_revision`; return
        the new revision. Raises SoilConflict when another write got there first.

        A write with a message id that is not answered within RESEND_AFTER is sent again
        under it, until PUBLISH_TIMEOUT: the new leader stores it, or drops it as a
        duplicate of the first send and answers with that one's revision."""
        key = soil_key(entity)
        out = self.write(key, value, expected_revision, humus_seq, delete=delete)
        headers = dict(out.headers or {})
        if out.msg_id:
            headers["Nats-Msg-Id"] = out.msg_id
        give_up = time.monotonic() + delivery.PUBLISH_TIMEOUT
        while True:
            left = give_up - time.monotonic()
            wait = min(delivery.RESEND_AFTER, left) if out.msg_id else left
            try:
                ack = await self._js.publish(out.subject, out.payload, timeout=max(wait, 0.01),
                                             headers=headers)
            except NatsTimeout:
                if wait >= left:
                    raise
                continue
            except APIError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    raise SoilConflict(
                        f"soil key {key} changed since revision {expected_revision}"
                    ) from None
                raise
            return int(ack.seq)


__all__ = [
    "BUCKET",
    "EXPECTED_LAST",
    "SEQ_HEADER",
    "SOIL_PREFIX",
    "WRONG_LAST_SEQUENCE",
    "Soil",
    "SoilConflict",
    "SoilEntry",
    "humus_seq_of",
    "soil_key",
]
