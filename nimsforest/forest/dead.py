"""Dead letters: every event a component gives up on, kept in the DEAD stream.

A component gives up on an event when its attempts reach `max_deliver`, at once when the
event is malformed (`BadEvent`) or refused for good (`Refused`: an output's 4xx), and when
JetStream itself stops redelivering (the last attempt's node died: the MAX_DELIVERIES
advisory). The event is then stored on `dead.<kind>.<name>` as one JSON `DeadLetter`: the
original subject, headers and bytes, the component, the node, the attempts and the last
error as a sentence. Its message id is `dead:<consumer>:<stream>:<seq>`, so every node
that reports the same event stores it once.

`DeadLetters` reads, replays and purges them. A replay publishes the original bytes on
the original subject with `Nimsforest-Replay-For: <consumer>` (every other component acks
it unseen, see consumer.py) and a new `Nats-Msg-Id`, so the component handles it as a new
event (an output sends it with a new idempotency key); the dead letter is then deleted.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field

from nimsforest.forest.model import ComponentKind, ComponentRef
from nimsforest.forest.trace import HOP_HEADER, TRACEPARENT, hop_name, hop_value
from nimsforest.streams import DEAD

if TYPE_CHECKING:
    from nats.js import JetStreamContext

DEAD_PREFIX = "dead."
REPLAY_FOR = "Nimsforest-Replay-For"  # the one consumer a replayed event is meant for
REPLAY_ID = "Nimsforest-Replay-Id"  # new for every replay: part of an output's idempotency key
# headers a replay must not carry over (JetStream would dedupe or refuse the message)
_DROPPED = ("Nats-Msg-Id", "Nats-Expected-Stream", "Nats-Expected-Last-Sequence",
            "Nats-Expected-Last-Subject-Sequence", "Nats-Expected-Last-Msg-Id", REPLAY_FOR,
            REPLAY_ID)


class DeadReason(StrEnum):
    MAX_DELIVERIES = "max deliveries"  # every attempt failed
    MALFORMED = "malformed"  # the event cannot be read (not JSON, not a leaf)
    REFUSED = "refused"  # the far side refused it for good (an output's 4xx)
    ABANDONED = "abandoned"  # JetStream stopped redelivering: the last attempt never answered


class DeadLetterMissing(LookupError):
    """There is no dead letter at that sequence."""


class DeadLetter(BaseModel):
    """One event a component gave up on."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64",
                              val_json_bytes="base64")

    component: ComponentRef
    consumer: str  # the durable consumer: where a replay goes
    node: str  # the node that gave up
    reason: DeadReason
    error: str  # the last error, one sentence
    attempts: int
    stream: str  # where the event was: RIVER or WIND, its sequence and subject there
    stream_seq: int
    subject: str
    headers: dict[str, str] = Field(default_factory=dict)
    data: bytes
    at: datetime

    @property
    def text(self) -> str | None:
        """The event as text, when it is UTF-8."""
        try:
            return self.data.decode()
        except UnicodeDecodeError:
            return None


class DeadEntry(BaseModel):
    """A dead letter as stored: its sequence in DEAD and the letter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int
    letter: DeadLetter


class ReplayReceipt(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    dead_seq: int
    component: ComponentRef
    stream: str
    subject: str
    seq: int  # the replayed event's new sequence in its stream
    replay_id: str


def dead_subject(ref: ComponentRef) -> str:
    return f"{DEAD_PREFIX}{ref.kind.value}.{ref.name}"


def dead_filter(ref: ComponentRef | None) -> str:
    return dead_subject(ref) if ref is not None else DEAD_PREFIX + ">"


def ref_of(subject: str) -> ComponentRef | None:
    """`dead.tree.contacts` -> tree 'contacts' (None for a subject that is not one)."""
    parts = subject.split(".", 2)
    if len(parts) != 3 or parts[0] + "." != DEAD_PREFIX:
        return None
    try:
        return ComponentRef(kind=ComponentKind(parts[1]), name=parts[2])
    except ValueError:
        return None


def letter_msg_id(letter: DeadLetter) -> str:
    return f"dead:{letter.consumer}:{letter.stream}:{letter.stream_seq}"


def new_letter(
    *, ref: ComponentRef, consumer: str, node: str, reason: DeadReason, error: str,
    attempts: int, stream: str, stream_seq: int, subject: str, headers: dict[str, str] | None,
    data: bytes,
) -> DeadLetter:
    return DeadLetter(
        component=ref, consumer=consumer, node=node, reason=reason, error=error,
        attempts=attempts, stream=stream, stream_seq=stream_seq, subject=subject,
        headers=dict(headers or {}), data=data, at=datetime.now(UTC),
    )


def _traced(letter: DeadLetter) -> dict[str, str]:
    """The event's trace context and who gave up on which message, on the dead letter
    itself (`nimsforest trace` finds it by either)."""
    hop = {HOP_HEADER: hop_value(hop_name(letter.component.token, letter.node), letter.stream,
                                 letter.stream_seq)}
    parent = letter.headers.get(TRACEPARENT)
    return {TRACEPARENT: parent, **hop} if parent else hop


def replay_headers(letter: DeadLetter, replay_id: str) -> dict[str, str]:
    """The original headers, without those that would make JetStream dedupe or refuse it,
    with the replay's target and its new id."""
    headers = {k: v for k, v in letter.headers.items() if k not in _DROPPED}
    headers[REPLAY_FOR] = letter.consumer
    headers[REPLAY_ID] = replay_id
    headers["Nats-Msg-Id"] = f"replay:{replay_id}"
    return headers


class DeadLetters:
    """The DEAD stream: bury (from the consumers), then list, show, replay and purge."""

    def __init__(self, js: JetStreamContext, node: str = "") -> None:
        self._js, self.node = js, node

    async def bury(self, letter: DeadLetter, timeout: float = 5.0) -> int:
        """Store `letter`; returns its sequence in DEAD. Raises when JetStream does not
        confirm it (the caller keeps the event)."""
        ack = await self._js.publish(
            dead_subject(letter.component), letter.model_dump_json().encode(),
            timeout=timeout, headers={"Nats-Msg-Id": letter_msg_id(letter), **_traced(letter)},
        )
        return int(ack.seq)

    async def counts(self) -> dict[ComponentRef, int]:
        """Dead letters kept per component, cluster-wide (from the stream's subjects)."""
        try:
            info = await self._js.stream_info(DEAD.name, subjects_filter=DEAD_PREFIX + ">")
        except NotFoundError:
            return {}
        out: dict[ComponentRef, int] = {}
        for subject, n in (info.state.subjects or {}).items():
            ref = ref_of(subject)
            if ref is not None:
                out[ref] = int(n)
        return out

    async def list(self, ref: ComponentRef | None = None, *, limit: int = 100,
                   after: int = 0) -> Sequence[DeadEntry]:
        """Up to `limit` dead letters (of `ref`, or all), oldest first, after sequence `after`."""
        entries: list[DeadEntry] = []
        seq = after + 1
        while len(entries) < limit:
            try:
                raw = await self._js.get_msg(DEAD.name, seq, subject=dead_filter(ref), next=True)
            except NotFoundError:
                break
            if raw.seq is None or raw.data is None:
                break
            entries.append(self._entry(raw.seq, raw.data))
            seq = raw.seq + 1
        return entries

    async def show(self, seq: int) -> DeadEntry:
        try:
            raw = await self._js.get_msg(DEAD.name, seq)
        except NotFoundError:
            raise DeadLetterMissing(f"There is no dead letter #{seq}.") from None
        if raw.data is None or raw.subject is None or ref_of(raw.subject) is None:
            raise DeadLetterMissing(f"There is no dead letter #{seq}.")
        return self._entry(seq, raw.data)

    async def replay(self, seq: int) -> ReplayReceipt:
        """Put dead letter `seq` back on its component's input (for that component only),
        then delete it."""
        entry = await self.show(seq)
        letter = entry.letter
        replay_id = uuid.uuid4().hex
        ack = await self._js.publish(letter.subject, letter.data, timeout=5.0,
                                     headers=replay_headers(letter, replay_id))
        await self._delete(seq)
        return ReplayReceipt(dead_seq=seq, component=letter.component, stream=ack.stream,
                             subject=letter.subject, seq=int(ack.seq), replay_id=replay_id)

    async def purge(self, ref: ComponentRef | None = None, seq: int | None = None) -> int:
        """Delete one dead letter (`seq`), a component's, or all; returns how many."""
        if seq is not None:
            await self.show(seq)
            await self._delete(seq)
            return 1
        before = await self.counts()
        n = before.get(ref, 0) if ref is not None else sum(before.values())
        try:
            if ref is None:
                await self._js.purge_stream(DEAD.name)
            else:
                await self._js.purge_stream(DEAD.name, subject=dead_subject(ref))
        except NotFoundError:
            return 0
        return n

    async def _delete(self, seq: int) -> None:
        try:
            await self._js.delete_msg(DEAD.name, seq)
        except NotFoundError:
            pass  # deleted by someone else meanwhile

    @staticmethod
    def _entry(seq: int, data: bytes) -> DeadEntry:
        return DeadEntry(seq=seq, letter=DeadLetter.model_validate_json(data))


def entry_json(entry: DeadEntry) -> dict[str, Any]:
    """A dead letter for people and scripts: the event as text when it is UTF-8."""
    letter = entry.letter
    body: dict[str, Any] = {"seq": entry.seq, **letter.model_dump(mode="json", exclude={"data"})}
    body["component"] = str(letter.component)
    body["kind"], body["name"] = letter.component.kind.value, letter.component.name
    text = letter.text
    body["data" if text is not None else "data_base64"] = (
        text if text is not None else letter.model_dump(mode="json")["data"]
    )
    return body


__all__ = [
    "DEAD_PREFIX",
    "REPLAY_FOR",
    "REPLAY_ID",
    "DeadEntry",
    "DeadLetter",
    "DeadLetterMissing",
    "DeadLetters",
    "DeadReason",
    "ReplayReceipt",
    "dead_subject",
    "entry_json",
    "new_letter",
    "ref_of",
    "replay_headers",
]
