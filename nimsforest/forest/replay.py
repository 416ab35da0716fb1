"""Re-feeding one component from its input stream (after a fixed script, for instance).

The events of the component's stream that its consumer's filter takes, from a sequence or
a time on (up to `until`, and never past the stream's last message when the replay
began), are published again on their own subjects with `Nimsforest-Replay-For:
<consumer>` (every other component acks them unseen, see consumer.py), a new
`Nimsforest-Replay-Id` and a new `Nats-Msg-Id`: the component handles each as a new
event; nothing else sees it. The copies stay in the stream like any message.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from pydantic import BaseModel, ConfigDict

from nimsforest.forest.dead import REPLAY_FOR, REPLAY_ID
from nimsforest.forest.delivery import ConsumerSpec
from nimsforest.forest.model import ComponentRef

if TYPE_CHECKING:
    from nats.js import JetStreamContext

MAX_REPLAY = 100_000
_DROPPED = ("Nats-Msg-Id", "Nats-Expected-Stream", "Nats-Expected-Last-Sequence",
            "Nats-Expected-Last-Subject-Sequence", "Nats-Expected-Last-Msg-Id", REPLAY_FOR,
            REPLAY_ID)


class ReplayRange(BaseModel):
    """Where a replay starts (exactly one of from_seq and since) and where it stops."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    from_seq: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    until_seq: int | None = None
    limit: int = 10_000


class ReplayDone(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    component: ComponentRef
    stream: str
    count: int
    first_seq: int | None  # the first and last original sequences replayed
    last_seq: int | None
    replay_id: str
    truncated: bool  # the limit stopped it before the end of the range


class NothingToReplay(ValueError):
    """The range is empty or wrong (one sentence)."""


async def replay(js: JetStreamContext, ref: ComponentRef, spec: ConsumerSpec,
                 rng: ReplayRange) -> ReplayDone:
    if (rng.from_seq is None) == (rng.since is None):
        raise NothingToReplay("Give where the replay starts: a sequence (--from-seq) or a "
                              "time (--since), not both.")
    info = await js.stream_info(spec.stream)
    last = int(info.state.last_seq)
    stop_seq = min(last, rng.until_seq) if rng.until_seq is not None else last
    if rng.from_seq is not None:
        start = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                               opt_start_seq=max(1, rng.from_seq))
    else:
        assert rng.since is not None
        since = rng.since if rng.since.tzinfo else rng.since.replace(tzinfo=UTC)
        start = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME,
                               opt_start_time=since.astimezone(UTC))
    replay_id = uuid.uuid4().hex
    done = ReplayDone(component=ref, stream=spec.stream, count=0, first_seq=None,
                      last_seq=None, replay_id=replay_id, truncated=False)
    if stop_seq == 0 or (rng.from_seq is not None and rng.from_seq > stop_seq):
        return done
    start.filter_subject = spec.filter_subject
    start.ack_policy = AckPolicy.NONE
    start.inactive_threshold = 30.0
    start.mem_storage = True
    start.num_replicas = 1
    sub = await js.pull_subscribe(spec.filter_subject, stream=spec.stream, config=start)
    count, first, last_done, truncated = 0, None, None, False
    try:
        while True:
            try:
                msgs = await sub.fetch(256, timeout=2)
            except Exception:  # noqa: BLE001 - nothing more to read
                break
            finished = False
            for m in msgs:
                meta = m.metadata
                seq = int(meta.sequence.stream)
                if seq > stop_seq or (rng.until is not None and meta.timestamp > _utc(rng.until)):
                    finished = True
                    break
                if (m.headers or {}).get(REPLAY_FOR):
                    continue  # a copy made by an earlier replay
                if count >= min(rng.limit, MAX_REPLAY):
                    truncated, finished = True, True
                    break
                headers = {k: v for k, v in (m.headers or {}).items() if k not in _DROPPED}
                headers[REPLAY_FOR] = spec.durable
                headers[REPLAY_ID] = f"{replay_id}:{seq}"
                headers["Nats-Msg-Id"] = f"replay:{replay_id}:{seq}"
                await js.publish(m.subject, m.data, headers=headers, timeout=5.0)
                count += 1
                first = first if first is not None else seq
                last_done = seq
                if seq >= stop_seq or meta.num_pending == 0:
                    finished = True
                    break
            if finished:
                break
    finally:
        try:
            await sub.unsubscribe()
        except Exception:  # noqa: BLE001, S110 - the ephemeral consumer goes away anyway
            pass
    return done.model_copy(update={"count": count, "first_seq": first, "last_seq": last_done,
                                   "truncated": truncated})


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


__all__ = ["MAX_REPLAY", "NothingToReplay", "ReplayDone", "ReplayRange", "replay"]
