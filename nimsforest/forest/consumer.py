"""One durable JetStream pull consumer shared by every node, driving one component.

Delivery contract (the same for trees, treehouses, nims and the decomposer):
- The consumer is durable and named after the component (`treehouse-scoring`); every node
  binds the same one, so each message goes to one node at a time (work is shared, never
  duplicated) and re-adding or restarting a component resumes where it stopped.
- A message is acked only after every output it produced was stored by JetStream
  (publish acks received). Outputs carry `Nats-Msg-Id = <consumer>:<stream seq>[:n]`,
  so a redelivered message does not store its outputs twice within the stream's
  duplicate window (2 minutes).
- A node that dies mid-way never acks: JetStream redelivers after `ack_wait` to any node.
  Slow handlers send in-progress acks so they are not redelivered while still working.
- A failed attempt is nak'd with a growing delay (0.5 s, 1 s, 2 s ... 60 s); at
  `max_deliver` attempts, or at once for a malformed message, it is terminated and
  reported as dead (status, log line, metric) instead of being redelivered forever.

Pulling is continuous: the runner keeps pull requests outstanding for up to
`max_inflight` messages, re-requests as messages complete, and watches server
heartbeats so a lost request (reconnect, server restart) is replaced.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError

from nimsforest import metrics
from nimsforest.forest.errors import BadEvent, EventError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

EXPIRES = 30.0
HEARTBEAT = 5.0
PUBLISH_TIMEOUT = 10.0


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subject: str
    ack_wait: float
    max_deliver: int
    max_inflight: int
    deliver_policy: DeliverPolicy = DeliverPolicy.NEW
    description: str = ""

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            name=self.durable,
            durable_name=self.durable,
            description=self.description or None,
            filter_subject=self.filter_subject,
            deliver_policy=self.deliver_policy,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            max_ack_pending=max(10_000, self.max_inflight * 8),
        )


@dataclass(frozen=True, slots=True)
class Output:
    subject: str
    payload: bytes
    msg_id: str | None = None


class Delivery:
    """One delivered message, with its stream position parsed once."""

    __slots__ = ("msg", "data", "subject", "stream_seq", "num_delivered", "headers")

    def __init__(self, msg: Msg) -> None:
        self.msg = msg
        self.data: bytes = msg.data
        self.subject: str = msg.subject
        self.headers: dict[str, str] = msg.headers or {}
        md = msg.metadata
        self.stream_seq: int = md.sequence.stream
        self.num_delivered: int = md.num_delivered


@dataclass
class Stats:
    events_in: int = 0
    events_out: int = 0
    dropped: int = 0
    errors: int = 0
    dead: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    started_at: datetime | None = None

    def error(self, text: str) -> None:
        self.errors += 1
        self.last_error = text
        self.last_error_at = datetime.now(UTC)


class Handler(Protocol):
    """What a component gives the runner. Exactly one of the two is used: `handle_sync`
    when `is_async` is False (Lua: runs in the subscription callback, in order), else
    `handle_async` (brains, Soil writes: one task per message). Both return the outputs
    to store before the message is acked; an empty list acks with nothing to emit."""

    is_async: bool

    def handle_sync(self, d: Delivery) -> Sequence[Output]: ...

    def handle_async(self, d: Delivery) -> Awaitable[Sequence[Output]]: ...


class _RateLimitedLog:
    """At most one line per `every` seconds per key; counts what it held back."""

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self._log, self._every = logger, every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) >= self._every:
            held = self._held.pop(key, 0)
            self._last[key] = now
            self._log.warning(text + (f" ({held} similar lines held back)" if held else ""))
        else:
            self._held[key] = self._held.get(key, 0) + 1


class ConsumerRunner:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        spec: ConsumerSpec,
        handler: Handler,
        stats: Stats,
        *,
        label: str,
        kind: str,
        name: str,
    ) -> None:
        self._nc, self._js, self.spec, self._handler, self.stats = nc, js, spec, handler, stats
        self._label = label
        self._log = logging.getLogger(f"nimsforest.forest.{kind}")
        self._rl = _RateLimitedLog(self._log)
        self._m_in = metrics.component_events_in.labels(kind, name)
        self._m_out = metrics.component_events_out.labels(kind, name)
        self._m_err = metrics.component_errors.labels(kind, name)
        self._m_lat = metrics.component_latency.labels(kind, name)
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"
        self._inbox = ""
        self._sub: Any = None
        self._adv_sub: Any = None
        self._credits = 0
        self._inflight: dict[int, tuple[Msg, float]] = {}  # id(msg) -> (msg, last ack-timer reset)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watch_task: asyncio.Task[None] | None = None
        self._last_seen = time.monotonic()
        self._stopping = False

    # lifecycle ------------------------------------------------------------------------
    async def ensure_consumer(self) -> None:
        cfg = self.spec.config()
        try:
            await self._js.add_consumer(self.spec.stream, cfg)
        except APIError:
            # An immutable setting differs (e.g. deliver policy): keep the consumer's own.
            info = await self._js.consumer_info(self.spec.stream, self.spec.durable)
            cfg.deliver_policy = info.config.deliver_policy
            cfg.opt_start_seq = info.config.opt_start_seq
            cfg.opt_start_time = info.config.opt_start_time
            await self._js.add_consumer(self.spec.stream, cfg)

    async def start(self) -> None:
        await self.ensure_consumer()
        self._stopping = False
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1)
        self._adv_sub = await self._nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.spec.stream}.{self.spec.durable}",
            cb=self._on_max_deliveries,
        )
        self._last_seen = time.monotonic()
        self._request_more()
        self._watch_task = asyncio.create_task(self._watch(), name=f"watch-{self.spec.durable}")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop pulling; let in-flight events finish for up to `grace` seconds; nak the rest
        so another node (or the next start) gets them at once."""
        self._stopping = True
        if self._watch_task:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        for sub in (self._adv_sub, self._sub):
            if sub is not None:
                try:
                    await sub.drain()  # no more pull interest; queued messages get nak'd
                except Exception:  # noqa: BLE001 - connection may be gone already
                    pass
        self._sub = self._adv_sub = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for msg, _ in list(self._inflight.values()):
            await self._quietly(msg.nak())
        self._inflight.clear()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # pulling --------------------------------------------------------------------------
    def _request_more(self) -> None:
        if self._stopping or self._sub is None:
            return
        free = self.spec.max_inflight - len(self._inflight) - self._credits
        if free <= 0 or (self._credits > 0 and free < max(1, self.spec.max_inflight // 2)):
            return
        self._credits += free
        self._spawn(self._send_request(free))

    async def _send_request(self, batch: int) -> None:
        req = {"batch": batch, "expires": int(EXPIRES * 1e9), "idle_heartbeat": int(HEARTBEAT * 1e9)}
        try:
            await self._nc.publish(self._next_subject, json.dumps(req).encode(), reply=self._inbox)
        except Exception:  # noqa: BLE001 - disconnected; the watchdog asks again
            self._credits = max(0, self._credits - batch)

    def _on_status(self, msg: Msg, status: str) -> None:
        if status == "100":
            return
        pending = (msg.headers or {}).get("Nats-Pending-Messages")
        if pending is not None and pending.isdigit():
            self._credits = max(0, self._credits - int(pending))
        elif status != "404":
            self._credits = 0
        desc = str((msg.headers or {}).get("Description", "")) or next(
            (str(v) for k, v in (msg.headers or {}).items() if str(k).lower().endswith("description")), ""
        )
        if status == "409" and "deleted" in desc.lower():
            self._log.warning("%s: its consumer %s was deleted; recreating it", self._label, self.spec.durable)
            self._spawn(self._recreate())
            return
        if status not in ("404", "408"):
            self._log.debug("%s: pull status %s %s", self._label, status, desc)
        self._request_more()

    async def _recreate(self) -> None:
        try:
            await self.ensure_consumer()
        except Exception as exc:  # noqa: BLE001 - the watchdog retries
            self._log.warning("%s: cannot recreate consumer %s: %s", self._label, self.spec.durable, exc)
        self._credits = 0
        self._request_more()

    async def _watch(self) -> None:
        period = max(0.05, min(HEARTBEAT, self.spec.ack_wait / 3))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            if self._credits > 0 and now - self._last_seen > 3 * HEARTBEAT:
                self._log.info("%s: no word from JetStream for %.0fs; asking again", self._label, now - self._last_seen)
                self._last_seen = now
                await self._recreate()
            elif self._credits == 0:
                self._request_more()
            for key, (msg, since) in list(self._inflight.items()):
                if now - since > self.spec.ack_wait / 3:
                    self._inflight[key] = (msg, now)
                    self._spawn(self._quietly(msg.in_progress()))

    # handling -------------------------------------------------------------------------
    async def _on_msg(self, msg: Msg) -> None:
        self._last_seen = time.monotonic()
        status = msg.headers.get("Status") if msg.headers else None
        if status:
            self._on_status(msg, status)
            return
        if not msg.reply:
            return
        self._credits = max(0, self._credits - 1)
        if self._stopping:
            await self._quietly(msg.nak())
            return
        t0 = time.perf_counter()
        self._inflight[id(msg)] = (msg, time.monotonic())
        self.stats.events_in += 1
        self._m_in.inc()
        try:
            d = Delivery(msg)
        except Exception:  # noqa: BLE001 - not a JetStream delivery
            self._done(msg)
            return
        if self._handler.is_async:
            self._spawn(self._run_async(d, t0))
            return
        try:
            outputs = self._handler.handle_sync(d)
        except Exception as exc:  # noqa: BLE001 - reported per event
            self._spawn(self._failed(d, exc))
            return
        if not outputs:
            await self._ack(d, t0, 0)
            return
        try:
            futures = [await self._publish(o) for o in outputs]
        except Exception as exc:  # noqa: BLE001
            self._spawn(self._failed(d, exc))
            return
        self._spawn(self._complete(d, futures, t0))

    async def _publish(self, o: Output) -> asyncio.Future[Any]:
        headers = {"Nats-Msg-Id": o.msg_id} if o.msg_id else None
        return await self._js.publish_async(o.subject, o.payload, headers=headers)

    async def _run_async(self, d: Delivery, t0: float) -> None:
        try:
            outputs = await self._handler.handle_async(d)
            futures = [await self._publish(o) for o in outputs]
        except asyncio.CancelledError:
            await self._quietly(d.msg.nak())
            self._done(d.msg)
            raise
        except Exception as exc:  # noqa: BLE001 - reported per event
            await self._failed(d, exc)
            return
        await self._complete(d, futures, t0)

    async def _complete(self, d: Delivery, futures: list[asyncio.Future[Any]], t0: float) -> None:
        if futures:
            try:
                await asyncio.wait_for(asyncio.gather(*futures), PUBLISH_TIMEOUT)
            except asyncio.CancelledError:
                await self._quietly(d.msg.nak())
                self._done(d.msg)
                raise
            except Exception as exc:  # noqa: BLE001 - not stored: retry the event
                for f in futures:
                    if not f.done():
                        f.cancel()
                await self._failed(d, exc if str(exc) else TimeoutError("JetStream did not confirm the outputs"))
                return
        await self._ack(d, t0, len(futures))

    async def _ack(self, d: Delivery, t0: float, n_out: int) -> None:
        await self._quietly(d.msg.ack())
        if n_out:
            self.stats.events_out += n_out
            self._m_out.inc(n_out)
        self._m_lat.observe(time.perf_counter() - t0)
        self._done(d.msg)

    async def _failed(self, d: Delivery, exc: BaseException) -> None:
        text = str(exc) or type(exc).__name__
        self.stats.error(text)
        self._m_err.inc()
        where = f"{self.spec.stream} #{d.stream_seq}"
        if isinstance(exc, BadEvent) or d.num_delivered >= self.spec.max_deliver:
            await self._quietly(d.msg.term())
            self.stats.dead += 1
            why = "it is malformed" if isinstance(exc, BadEvent) else f"{d.num_delivered} attempts"
            self._log.warning("%s gave up on %s after %s: %s", self._label, where, why, text)
        else:
            delay = min(60.0, 0.5 * 2 ** (d.num_delivered - 1))
            await self._quietly(d.msg.nak(delay=delay))
            self._rl.warning(
                "fail",
                f"{self._label}: {where} failed (attempt {d.num_delivered} of {self.spec.max_deliver}), "
                f"retrying in {delay:g}s: {text}",
            )
        if not isinstance(exc, EventError):
            self._log.debug("%s: %s", self._label, text, exc_info=exc)
        self._done(d.msg)

    async def _on_max_deliveries(self, msg: Msg) -> None:
        """JetStream itself gave up (the last attempt's node died before it could answer)."""
        try:
            seq = json.loads(msg.data).get("stream_seq", "?")
        except ValueError:
            seq = "?"
        self.stats.dead += 1
        self._log.warning(
            "%s: JetStream gave up on %s #%s after %d deliveries",
            self._label, self.spec.stream, seq, self.spec.max_deliver,
        )

    def _done(self, msg: Msg) -> None:
        self._inflight.pop(id(msg), None)
        self._request_more()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _quietly(aw: Awaitable[Any]) -> None:
        try:
            await aw
        except Exception:  # noqa: BLE001 - acks are best effort; redelivery covers a loss
            pass


__all__ = ["ConsumerRunner", "ConsumerSpec", "Output", "Delivery", "Stats", "Handler"]
