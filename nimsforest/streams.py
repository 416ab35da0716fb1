"""The JetStream streams and KV buckets NimsForest owns, and how they are created.

Every stream NimsForest creates goes through `ensure_stream`, which:
- marks it as ours (stream metadata `nimsforest.owner`), so the cluster manager can find
  and re-scale every owned stream, including ones the forest adds later;
- places it on node servers only (placement tag `role:node`), never on a witness;
- creates KV buckets as their `KV_<bucket>` stream directly, because nats-py's
  `create_key_value` drops the placement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from nats.js.api import (
    DiscardPolicy,
    Placement,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import APIError, NotFoundError

from natsembed import NODE_TAG, WITNESS_TAG
from natsembed.errors import reason
from nimsforest.marks import OWNER_KEY, OWNER_VALUE

T = TypeVar("T")

if TYPE_CHECKING:
    from nats.js import JetStreamContext

DAY = 24 * 3600.0
log = logging.getLogger("nimsforest")


@dataclass(frozen=True)
class StreamSpec:
    """What a NimsForest stream looks like, apart from its replica count."""

    name: str
    subjects: tuple[str, ...]
    description: str = ""
    retention: RetentionPolicy = RetentionPolicy.LIMITS
    max_age: float = 0.0  # seconds, 0 = forever
    max_msgs: int = -1
    max_bytes: int = -1
    max_msgs_per_subject: int = -1
    discard: DiscardPolicy = DiscardPolicy.OLD
    duplicate_window: float = 120.0
    kv_bucket: str | None = None  # set for the stream behind a KV bucket
    extra_metadata: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def config(self, replicas: int, placement_tags: tuple[str, ...] | None) -> StreamConfig:
        metadata = {OWNER_KEY: OWNER_VALUE, **dict(self.extra_metadata)}
        placement = Placement(tags=list(placement_tags)) if placement_tags else None
        kv = self.kv_bucket is not None
        return StreamConfig(
            name=self.name,
            description=self.description or None,
            subjects=list(self.subjects),
            retention=self.retention,
            max_age=self.max_age or None,
            max_msgs=self.max_msgs,
            max_bytes=self.max_bytes,
            max_msgs_per_subject=self.max_msgs_per_subject,
            discard=self.discard,
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=self.duplicate_window,
            placement=placement,
            metadata=metadata,
            allow_rollup_hdrs=kv,
            deny_delete=kv,
            allow_direct=True if kv else None,
            max_consumers=-1 if kv else None,
        )


def kv_spec(bucket: str, *, history: int = 1, description: str = "", ttl: float = 0.0) -> StreamSpec:
    """The stream behind KV bucket `bucket`, shaped as nats-py's create_key_value does."""
    return StreamSpec(
        name=f"KV_{bucket}",
        subjects=(f"$KV.{bucket}.>",),
        description=description,
        max_msgs_per_subject=history,
        max_age=ttl,
        discard=DiscardPolicy.NEW,
        duplicate_window=min(120.0, ttl) if ttl else 120.0,
        kv_bucket=bucket,
    )


# RIVER keeps messages by limits (not WorkQueue), so several trees may watch overlapping
# subjects, each through its own durable consumer.
RIVER = StreamSpec(
    name="RIVER",
    subjects=("river.>",),
    description="NimsForest raw input",
    max_age=DAY,
    max_msgs=1_000_000,
)
# WIND carries leaves (`wind.<leaf subject>`), durable so that every treehouse and nim
# consumes through one shared durable consumer: work is shared between nodes and a leaf
# is redelivered when a node dies mid-way (the Go original used core NATS: at most once).
WIND = StreamSpec(
    name="WIND",
    subjects=("wind.>",),
    description="NimsForest leaves",
    max_age=DAY,
    max_msgs=1_000_000,
)
HUMUS = StreamSpec(
    name="HUMUS",
    subjects=("humus.>",),
    description="NimsForest state change log",
    max_age=7 * DAY,
    max_msgs=1_000_000,
)
SOIL = kv_spec("SOIL", history=10, description="NimsForest current state storage")
# DEAD keeps every event a component gave up on (`dead.<kind>.<name>`, one JSON dead
# letter each: see nimsforest.forest.dead), until it is replayed, purged or 30 days old.
DEAD = StreamSpec(
    name="DEAD",
    subjects=("dead.>",),
    description="NimsForest dead letters",
    max_age=30 * DAY,
    max_msgs=1_000_000,
)

# What sources keep cluster-wide: http_poll cursors and leases, schedules' last ticks.
SOURCES = kv_spec("SOURCES", history=1, description="NimsForest source state")

# Answers of nims with `cache` set (created when such a nim runs; a cache may be lost).
NIM_CACHE = kv_spec("NIMCACHE", history=1, ttl=7 * DAY,
                    description="NimsForest nim answers, by brain, model and prompt")

# Request and token counts of brains with a rate_limit, per window, shared by the nodes.
NIM_RATE = kv_spec("NIMRATE", history=1, ttl=DAY,
                   description="NimsForest brain rate-limit windows")

# The streams a node creates at start, in order.
CORE_STREAMS: tuple[StreamSpec, ...] = (RIVER, WIND, HUMUS, SOIL, DEAD, SOURCES)


def replication_factor(cluster_size: int) -> int:
    """min(cluster size, 3), and at least 1."""
    return max(1, min(cluster_size, 3))


def is_owned(info: StreamInfo) -> bool:
    return bool(info.config.metadata and info.config.metadata.get(OWNER_KEY) == OWNER_VALUE)


async def ensure_stream(
    js: JetStreamContext,
    spec: StreamSpec,
    replicas: int,
    placement_tags: tuple[str, ...] | None = (NODE_TAG,),
    *,
    rescale: bool = True,
) -> StreamInfo:
    """Create `spec` at `replicas`, or bring an existing stream in line.

    An existing stream keeps its other settings (limits a user tuned stay tuned); its
    placement and owner mark are brought in line, and its replica count too when `rescale`.
    Where a cluster manager keeps the replication (embedded mode), callers pass
    `rescale=False`: a count computed at start can be stale by the time it is applied,
    and two writers would scale a stream back and forth.
    """
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        return await js.add_stream(spec.config(replicas, placement_tags))
    cfg = info.config
    if not rescale:
        replicas = cfg.num_replicas or replicas
    wanted_placement = list(placement_tags) if placement_tags else None
    have_placement = cfg.placement.tags if cfg.placement else None
    if cfg.num_replicas == replicas and have_placement == wanted_placement and is_owned(info):
        return info
    metadata = dict(cfg.metadata or {})
    metadata[OWNER_KEY] = OWNER_VALUE
    new_cfg = replace(
        cfg,
        num_replicas=replicas,
        placement=Placement(tags=wanted_placement) if wanted_placement else cfg.placement,
        metadata=metadata,
    )
    return await js.update_stream(new_cfg)


async def ensure_streams(
    js: Any,
    specs: tuple[StreamSpec, ...],
    replicas: int,
    placement_tags: tuple[str, ...] | None,
    *,
    rescale: bool = True,
    attempts: int = 10,
    interval: float = 0.5,
) -> None:
    """`ensure_stream` for each of `specs`, retrying with backoff while JetStream is
    unavailable."""

    async def ensure_all() -> None:
        await asyncio.gather(
            *(ensure_stream(js, s, replicas, placement_tags, rescale=rescale) for s in specs)
        )

    await with_backoff(
        ensure_all,
        attempts=attempts,
        delay=interval,
        waiting="JetStream not ready for streams",
        failed=f"JetStream did not accept the streams after {attempts} attempts",
    )


async def with_backoff(
    op: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    delay: float,
    waiting: str,
    failed: str,
    max_delay: float = 10.0,
    logger: logging.Logger = log,
) -> T:
    """`op()`, retried up to `attempts` times with a doubling delay while it fails (each
    failure logged as "<waiting> (<reason>); retrying in Ns"); then a RuntimeError
    "<failed>: <reason>". For start-up work that JetStream may not take yet."""
    for attempt in range(1, attempts + 1):
        try:
            return await op()
        except Exception as exc:  # noqa: BLE001 - retried, then reported in one sentence
            if attempt == attempts:
                raise RuntimeError(f"{failed}: {reason(exc)}") from None
            logger.warning("%s (%s); retrying in %gs", waiting, reason(exc), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
    raise AssertionError("attempts must be at least 1")


async def choose_replicas(js: Any, probe: StreamSpec) -> int:
    """The highest replica count (3, 2, 1) the JetStream behind `js` accepts for `probe`."""
    for rf in (3, 2):
        try:
            await ensure_stream(js, probe, rf, None)
            return rf
        except APIError as exc:
            # 10074: replicas > 1 not supported in non-clustered mode; 10005: insufficient resources
            if exc.err_code not in (10074, 10005):
                raise
    return 1


def describe_streams(specs: tuple[StreamSpec, ...]) -> str:
    streams = [s.name for s in specs if s.kv_bucket is None]
    buckets = [s.kv_bucket for s in specs if s.kv_bucket is not None]
    parts = [f"streams {', '.join(streams)}"] if streams else []
    if buckets:
        parts.append(f"KV bucket{'s' if len(buckets) > 1 else ''} {', '.join(buckets)}")
    return " and ".join(parts)




__all__ = [
    "StreamSpec",
    "kv_spec",
    "RIVER",
    "WIND",
    "HUMUS",
    "NIM_CACHE",
    "NIM_RATE",
    "SOIL",
    "DEAD",
    "SOURCES",
    "CORE_STREAMS",
    "NODE_TAG",
    "WITNESS_TAG",
    "OWNER_KEY",
    "replication_factor",
    "is_owned",
    "ensure_stream",
    "with_backoff",
    "ensure_streams",
    "choose_replicas",
    "describe_streams",
]
