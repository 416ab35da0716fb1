"""The audit log: one record per change, accepted or refused, in the JetStream stream
AUDIT (`audit.forest.<action>`, kept 90 days or 100,000 records).

Contract: `record()` never raises (a change has already happened or been refused; a
failing audit write is logged as a warning); `recent()` returns the newest records,
oldest first.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, ConfigDict, Field

from nimsforest.streams import DAY, NODE_TAG, StreamSpec, ensure_stream

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger("nimsforest.control")

AUDIT = StreamSpec(
    name="AUDIT",
    subjects=("audit.>",),
    description="NimsForest audit log of forest changes",
    max_age=90 * DAY,
    max_msgs=100_000,
)


class Via(StrEnum):
    HTTP = "http"
    NATS = "nats"
    SIGNAL = "signal"  # SIGHUP
    STARTUP = "startup"  # seeding the bucket from forest.yaml


class Action(StrEnum):
    """What a change does (the audit record's `action`, a change's answer)."""

    ADD = "add"
    REPLACE = "replace"
    REMOVE = "remove"
    RELOAD = "reload"
    SEED = "seed"
    REPLAY = "replay"  # a dead letter put back on its component's input
    PURGE = "purge"  # dead letters deleted
    DRAIN = "drain"  # a node drained (POST /api/v1/node/drain)
    UNDRAIN = "undrain"  # a node serving again (POST /api/v1/node/undrain)
    RESTART = "restart"  # a node drained, then restarted (POST /api/v1/node/restart)


class Refusal(StrEnum):
    """Why a change was refused before the controller weighed it."""

    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate limited"
    INVALID = "invalid"  # the body is not JSON or does not fit the schema


class Actor(BaseModel):
    """Who asked for a change."""

    model_config = ConfigDict(frozen=True)

    via: Via
    address: str | None = None  # HTTP: the client's address
    token: bool = False  # HTTP: a valid bearer token was presented
    client: str | None = None  # NATS: the name the client declared (Nimsforest-Client)

    def __str__(self) -> str:
        parts = [self.via.value]
        if self.address:
            parts.append(self.address)
        if self.client:
            parts.append(self.client)
        if self.token:
            parts.append("(token)")
        return " ".join(parts)


class AuditRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    ts: datetime = Field(default_factory=lambda: datetime.now(UTC))
    node: str
    who: Actor
    action: Action
    kind: str | None = None
    name: str | None = None
    digest: str | None = None  # of the spec written (add, replace)
    ok: bool
    result: str  # "ok", or the sentence the request was refused with
    refusal: Refusal | None = None  # refused before the controller weighed it: why
    detail: str | None = None  # e.g. a reload's summary


class AuditLog:
    def __init__(
        self,
        nc: Client,
        *,
        replicas: int = 1,
        placement_tags: tuple[str, ...] | None = (NODE_TAG,),
    ) -> None:
        self._js = nc.jetstream()
        self._replicas, self._tags = replicas, placement_tags

    async def open(self) -> None:
        await ensure_stream(self._js, AUDIT, self._replicas, self._tags, rescale=False)

    async def record(self, rec: AuditRecord) -> None:
        try:
            await self._js.publish(f"audit.forest.{rec.action}", rec.model_dump_json().encode())
        except Exception as exc:  # noqa: BLE001 - never fails the change itself
            log.warning("Could not write the audit record (%s): %s", exc, rec.model_dump_json())

    async def recent(self, limit: int = 20) -> list[AuditRecord]:
        info = await self._js.stream_info(AUDIT.name)
        state = info.state
        if not state.messages:
            return []
        start = max(int(state.first_seq), int(state.last_seq) - limit + 1)
        want = int(state.last_seq) - start + 1
        sub = await self._js.pull_subscribe(
            "audit.>",
            stream=AUDIT.name,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=30.0,
                mem_storage=True,
                num_replicas=1,
            ),
        )
        out: list[AuditRecord] = []
        try:
            while len(out) < want:
                try:
                    msgs = await sub.fetch(min(want - len(out), 256), timeout=2)
                except (TimeoutError, Exception):  # noqa: BLE001 - nothing more
                    break
                for m in msgs:
                    try:
                        out.append(AuditRecord.model_validate(json.loads(m.data)))
                    except ValueError:
                        continue  # not ours
                    if m.metadata.sequence.stream >= state.last_seq:
                        return out
        finally:
            await sub.unsubscribe()
        return out


__all__ = ["AUDIT", "Action", "Actor", "AuditLog", "AuditRecord", "Refusal", "Via"]
