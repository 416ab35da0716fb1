"""One durable JetStream pull consumer shared by every node, driving one component.

Delivery contract (the same for trees, treehouses, nims and the decomposer):
- The consumer is durable and named after the component (`treehouse-scoring`); every node
  binds the same one, so each message goes to one node at a time (work is shared, never
  duplicated) and re-adding or restarting a component resumes where it stopped.
- A message is acked only after every output it produced was stored by JetStream
  (publish acks received). Outputs carry `Nats-Msg-Id = <consumer>:<stream seq>[:n]`,
  so a redelivered message does not store its outputs twice within the stream's
  duplicate window (2 minutes). For the same reason an output not confirmed after
  RESEND_AFTER (1 s), or when any stream elects a leader (its LEADER_ELECTED advisory), is
  sent again under its id, until PUBLISH_TIMEOUT (10 s): a publish to a stream leader that
  froze or died is never answered, and the new leader stores the resend.
- A node that dies mid-way never acks: JetStream redelivers after `ack_wait` to any node.
  Slow handlers send in-progress acks so they are not redelivered while still working.
- A failed attempt is nak'd with a growing delay (0.5 s, 1 s, 2 s ... 60 s, or the
  `RetryLater` delay the handler asks for); at `max_deliver` attempts, or at once for a
  malformed (`BadEvent`) or refused (`Refused`) message, it is stored in the DEAD stream
  (dead.py), then terminated and reported as dead (status, log line, metric) instead of
  being redelivered forever. A dead letter JetStream does not confirm leaves the event
  un-terminated (nak'd), so it is tried again, or buried from the MAX_DELIVERIES advisory.
- A replayed event (header `Nimsforest-Replay-For`) is handled only by the consumer it
  names; every other consumer acks it unseen.

Pulling is in pull.py. Publish acks are awaited, in order, by one completer task per
consumer (no task per message on the synchronous path).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any

from nimsforest import metrics
from nimsforest.forest.dead import REPLAY_FOR, DeadLetters, DeadReason, new_letter
from nimsforest.forest.delivery import (
    PUBLISH_TIMEOUT,
    RESEND_AFTER,
    ConsumerSpec,
    Delivery,
    Handler,
    Handoff,
    Output,
    Stats,
)
from nimsforest.forest.errors import BadEvent, EventError, Refused, RetryLater
from nimsforest.forest.model import ComponentKind, ComponentRef
from nimsforest.forest.publisher import Publisher
from nimsforest.forest.pull import HEARTBEAT, Puller
from nimsforest.forest.trace import NO_HOP, NO_TRACING, Hop, Tracing, hop_name, hop_value
from nimsforest.tasks import cancel_and_wait

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext



# Any stream's new leader: the outputs a job waits for may be on their way to the old one.
STREAM_ELECTED = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.*"


class _Job:
    __slots__ = ("d", "futures", "hop", "published_at", "resent_at", "sent", "t0", "touched")

    def __init__(self, d: Delivery, t0: float, hop: Hop) -> None:
        self.d, self.t0, self.touched, self.hop = d, t0, time.monotonic(), hop
        self.futures: list[asyncio.Future[Any]] = []
        self.sent: list[tuple[str, bytes, dict[str, str]]] = []  # each future's publish
        self.published_at = self.resent_at = 0.0
        d.traceparent = hop.traceparent

    def reset(self) -> None:
        self.futures, self.sent, self.published_at, self.resent_at = [], [], 0.0, 0.0

    @property
    def unconfirmed(self) -> bool:
        """Published, and JetStream has not answered every output yet."""
        return bool(self.published_at) and not all(f.done() for f in self.futures)


def _adopt(old: asyncio.Future[Any], new: asyncio.Future[Any]) -> None:
    """A resent output's answer stands for the first send's (a failed resend does not: the
    first send may yet be answered, and PUBLISH_TIMEOUT still bounds it)."""
    if new.cancelled():
        return
    if new.exception() is None and not old.done():
        old.set_result(new.result())


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
        publisher: Publisher,
        spec: ConsumerSpec,
        handler: Handler,
        stats: Stats,
        *,
        label: str,
        kind: str,
        name: str,
        dead: DeadLetters | None = None,
        tracing: Tracing = NO_TRACING,
        node: str = "",
    ) -> None:
        self._nc, self._js, self._pub, self.spec, self._handler, self.stats = (
            nc,
            js,
            publisher,
            spec,
            handler,
            stats,
        )
        self._label = label
        self._ref = ComponentRef(kind=ComponentKind(kind), name=name)
        self._dead = dead
        self._tracing, self._span = tracing, f"{kind} {name}"
        # a hop that records nothing (no exporter) and whose outputs carry no trace context
        # (the Decomposer's Soil writes) has nothing to read the parent for
        self._quiet = not (tracing.enabled or handler.hop_headers)
        self._who = hop_name(self._ref.token, node)
        self._attributes = {"nimsforest.component": self._ref.token, "nimsforest.node": node,
                            "messaging.destination.name": spec.stream}
        self._log = logging.getLogger(f"nimsforest.forest.{kind}")
        self._rl = _RateLimitedLog(self._log)
        self._m_in = metrics.component_events_in.labels(kind, name)
        self._m_out = metrics.component_events_out.labels(kind, name)
        self._m_err = metrics.component_errors.labels(kind, name)
        self._m_lat = metrics.component_latency.labels(kind, name)
        self._m_dead = metrics.component_dead.labels(kind, name)
        self._pull = Puller(nc, js, spec, self._on_msg, self._spawn, self._log, label,
                            self._request_more)
        self._advisory: Any = None
        self._elected: Any = None
        self._inflight: dict[int, _Job] = {}  # id(msg) -> job
        self._queue: asyncio.Queue[tuple[_Job, BaseException | None]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._stopping = False
        self._exported = (
            stats.events_in,
            stats.events_out,
        )  # already added to the Prometheus counters

    # lifecycle ------------------------------------------------------------------------
    async def ensure_consumer(self) -> None:
        await self._pull.ensure_consumer()

    async def start(self) -> None:
        self._stopping = False
        await self._pull.start()
        self._advisory = await self._nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.spec.stream}.{self.spec.durable}",
            cb=self._on_max_deliveries,
        )
        self._elected = await self._nc.subscribe(STREAM_ELECTED, cb=self._on_stream_elected)
        self._background = [
            asyncio.create_task(self._complete_loop(), name=f"complete-{self.spec.durable}"),
            asyncio.create_task(self._watch(), name=f"watch-{self.spec.durable}"),
        ]
        self._pull.request(0)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop pulling; let in-flight events finish for up to `grace` seconds; nak the rest
        so another node (or the next start) gets them at once."""
        self._stopping = True
        for sub in (*self._pull.subscriptions, self._advisory, self._elected):
            if sub is None:
                continue
            try:  # no more pull interest; already-queued messages get nak'd
                await asyncio.wait_for(sub.drain(), max(grace, 0.5))
            except Exception:  # noqa: BLE001, S110 - connection may be gone already
                pass
        self._pull.detach()
        self._advisory = self._elected = None
        deadline = time.monotonic() + grace
        while (self._tasks or self._inflight) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        # cancelled again if one goes on (a lost cancel: nimsforest.tasks); bounded, named
        await cancel_and_wait([*self._tasks, *self._background], max(grace, 1.0),
                              owner=self._label)
        for job in list(self._inflight.values()):
            await self._quietly(job.d.msg.nak())
        self._inflight.clear()
        self._export()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def _watch(self) -> None:
        """Lost pull requests, slow handlers (in-progress acks) and publish timeouts."""
        period = max(0.05, min(HEARTBEAT, self.spec.ack_wait / 3))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            self._pull.check(now)
            self._request_more()
            for job in list(self._inflight.values()):
                if job.published_at and now - job.published_at > PUBLISH_TIMEOUT:
                    for f in job.futures:
                        if not f.done():
                            f.set_exception(
                                TimeoutError("JetStream did not confirm the outputs in time")
                            )
                    continue
                if job.unconfirmed and now - job.resent_at > RESEND_AFTER:
                    self._resend_now(job, now)
                # a job waiting for its outputs' confirmation is still in progress too
                if now - job.touched > self.spec.ack_wait / 3:
                    job.touched = now
                    self._spawn(self._quietly(job.d.msg.in_progress()))

    async def _on_stream_elected(self, msg: Msg) -> None:
        """A stream elected a leader: outputs not confirmed yet may have gone to the old one
        (frozen, dead), so they are sent again now rather than at their next RESEND_AFTER."""
        now = time.monotonic()
        for job in list(self._inflight.values()):
            if job.unconfirmed:
                self._resend_now(job, now)

    def _resend_now(self, job: _Job, now: float) -> None:
        job.resent_at = now
        self._spawn(self._resend(job))

    # handling -------------------------------------------------------------------------
    async def _on_msg(self, msg: Msg) -> None:
        if self._stopping:
            await self._quietly(msg.nak())
            return
        if msg.headers and msg.headers.get(REPLAY_FOR, self.spec.durable) != self.spec.durable:
            await self._quietly(msg.ack())  # replayed for another component
            return
        try:
            d = Delivery(msg)
        except (ValueError, IndexError):  # not a JetStream delivery
            return
        job = _Job(d, time.perf_counter(), NO_HOP if self._quiet else self._tracing.hop_on(
            self._span, d.headers, self._attributes))
        self._inflight[id(msg)] = job
        self.stats.events_in += 1
        if self._handler.is_async:
            self._spawn(self._run_async(job))
            return
        try:
            outputs = self._handler.handle_sync(job.d)
            if outputs is Handoff.ASYNC:
                self._spawn(self._run_async(job))
                return
            await self._publish(job, outputs)
        except Exception as exc:  # noqa: BLE001 - reported per event
            self._queue.put_nowait((job, exc))
            return
        self._queue.put_nowait((job, None))

    async def _publish(self, job: _Job, outputs: Sequence[Output]) -> None:
        """Store the outputs, each with this hop's trace context, its component and node and
        its input's position (`Nimsforest-Hop: <who> <stream>:<seq>`, what lineage walks
        back along); the Decomposer's Soil writes without them."""
        publish = self._pub.publish
        hop = (job.hop.headers(hop_value(self._who, self.spec.stream, job.d.stream_seq))
               if self._handler.hop_headers else {})
        for o in outputs:
            headers = {**o.headers, **hop} if o.headers else dict(hop)
            if o.msg_id:
                headers["Nats-Msg-Id"] = o.msg_id
            job.futures.append(await publish(o.subject, o.payload, headers))
            job.sent.append((o.subject, o.payload, headers))
        job.published_at = job.resent_at = time.monotonic()

    async def _resend(self, job: _Job) -> None:
        """Send again, under their message ids, the outputs JetStream has not confirmed."""
        for old, (subject, payload, headers) in zip(job.futures, job.sent, strict=True):
            if old.done() or "Nats-Msg-Id" not in headers:
                continue
            try:
                new = await self._pub.publish(subject, payload, headers)
            except Exception:  # noqa: BLE001 - disconnected: the first send still counts
                return
            new.add_done_callback(functools.partial(_adopt, old))

    async def _run_async(self, job: _Job) -> None:
        try:
            await self._publish(job, await self._handler.handle_async(job.d))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported per event
            self._queue.put_nowait((job, exc))
            return
        self._queue.put_nowait((job, None))

    async def _complete_loop(self) -> None:
        """Ack each job once JetStream stored its outputs; fail it otherwise."""
        while True:
            if self._queue.empty():
                self._export()
            job, exc = await self._queue.get()
            try:
                if await self._complete(job, exc) is Handoff.ASYNC:
                    continue  # handed to handle_async: still in flight
            except asyncio.CancelledError:
                raise
            except Exception as bug:  # noqa: BLE001 - never let one job stop the loop
                self._log.error(
                    "%s: completing %s #%d failed: %s",
                    self._label,
                    self.spec.stream,
                    job.d.stream_seq,
                    bug,
                    exc_info=bug,
                )
                await self._quietly(job.d.msg.nak(delay=1.0))
            self._inflight.pop(id(job.d.msg), None)
            self._request_more()

    async def _complete(self, job: _Job, exc: BaseException | None) -> Handoff | None:
        """Ack, retry in handle_async (returns Handoff.ASYNC: the job is still in flight),
        or fail the job."""
        if exc is None:
            for f in job.futures:
                try:
                    await f
                except asyncio.CancelledError:
                    # Cancelling this task cancels the future it awaits too: only a future
                    # cancelled by someone else (the publisher, on a closed connection) is
                    # the event's failure; a cancellation of this task must go through.
                    task = asyncio.current_task()
                    if not f.cancelled() or (task is not None and task.cancelling()):
                        raise
                    exc = TimeoutError(
                        "the connection closed before JetStream confirmed the outputs"
                    )
                    break
                except Exception as e:  # noqa: BLE001 - not stored: retry the event
                    exc = e
                    break
        if exc is None:
            if job.futures:
                self._handler.stored(job.d, [f.result() for f in job.futures])
            await self._quietly(job.d.msg.ack())
            self.stats.events_out += len(job.futures)
            self._m_lat.observe(time.perf_counter() - job.t0)
            job.hop.end()
        elif self._handler.retry_async(job.d, exc):
            job.reset()
            self._spawn(self._run_async(job))
            return Handoff.ASYNC
        else:
            job.hop.end(str(exc) or type(exc).__name__)
            await self._failed(job.d, exc)
        return None

    def _request_more(self) -> None:
        if not self._stopping:
            self._pull.request(len(self._inflight))

    def _export(self) -> None:
        """Bring the Prometheus counters up to date (batched: they take a lock each)."""
        done_in, done_out = self._exported
        if self.stats.events_in > done_in:
            self._m_in.inc(self.stats.events_in - done_in)
        if self.stats.events_out > done_out:
            self._m_out.inc(self.stats.events_out - done_out)
        self._exported = (self.stats.events_in, self.stats.events_out)

    async def _failed(self, d: Delivery, exc: BaseException) -> None:
        text = str(exc) or type(exc).__name__
        self.stats.error(text)
        self._m_err.inc()
        where = f"{self.spec.stream} #{d.stream_seq}"
        reason = (
            DeadReason.MALFORMED if isinstance(exc, BadEvent)
            else DeadReason.REFUSED if isinstance(exc, Refused)
            else DeadReason.MAX_DELIVERIES if d.num_delivered >= self.spec.max_deliver
            else None
        )
        if reason is not None:
            if not await self._bury(reason, text, d.num_delivered, d.subject, d.stream_seq,
                                    d.headers, d.data):
                await self._quietly(d.msg.nak(delay=1.0))
                return
            await self._quietly(d.msg.term())
            self.stats.dead += 1
            self._m_dead.inc()
            why = {DeadReason.MALFORMED: "it is malformed", DeadReason.REFUSED: "it was refused"}
            self._log.warning("%s gave up on %s after %s: %s", self._label, where,
                              why.get(reason, f"{d.num_delivered} attempts"), text)
        else:
            delay = (
                exc.delay if isinstance(exc, RetryLater)
                else min(60.0, 0.5 * 2 ** (d.num_delivered - 1))
            )
            await self._quietly(d.msg.nak(delay=delay))
            self._rl.warning(
                "fail",
                f"{self._label}: {where} failed (attempt {d.num_delivered} of "
                f"{self.spec.max_deliver}), retrying in {delay:g}s: {text}",
            )
        if not isinstance(exc, EventError):
            self._log.debug("%s: %s", self._label, text, exc_info=exc)

    async def _on_max_deliveries(self, msg: Msg) -> None:
        """JetStream itself gave up (the last attempt's node died before it could answer):
        bury the event from the stream (every node does; DEAD keeps one)."""
        try:
            seq = json.loads(msg.data).get("stream_seq", "?")
        except ValueError:
            seq = "?"
        if isinstance(seq, int):
            try:
                raw = await self._js.get_msg(self.spec.stream, seq)
                await self._bury(
                    DeadReason.ABANDONED,
                    f"the last of {self.spec.max_deliver} attempts did not answer in time "
                    "(its node may have stopped)",
                    self.spec.max_deliver, raw.subject or "", seq, dict(raw.headers or {}),
                    raw.data or b"",
                )
            except Exception as exc:  # noqa: BLE001 - reported; the event is still in its stream
                self._log.warning("%s: could not keep %s #%s as a dead letter: %s",
                                  self._label, self.spec.stream, seq, exc)
        self.stats.dead += 1
        self._m_dead.inc()
        self._log.warning(
            "%s: JetStream gave up on %s #%s after %d deliveries",
            self._label,
            self.spec.stream,
            seq,
            self.spec.max_deliver,
        )

    async def _bury(self, reason: DeadReason, error: str, attempts: int, subject: str,
                    seq: int, headers: dict[str, str], data: bytes) -> bool:
        """Store the event in DEAD; False when JetStream did not confirm it."""
        if self._dead is None:
            return True
        letter = new_letter(
            ref=self._ref, consumer=self.spec.durable, node=self._dead.node, reason=reason,
            error=error, attempts=attempts, stream=self.spec.stream, stream_seq=seq,
            subject=subject, headers=headers, data=data,
        )
        try:
            await self._dead.bury(letter)
            return True
        except Exception as exc:  # noqa: BLE001 - the event is kept (nak'd) and tried again
            self._rl.warning("dead", f"{self._label}: could not store {self.spec.stream} "
                                     f"#{seq} as a dead letter, keeping it: {exc}")
            return False

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _quietly(aw: Awaitable[Any]) -> None:
        try:
            await aw
        except Exception:  # noqa: BLE001, S110 - acks are best effort; redelivery covers a loss
            pass


__all__ = ["PUBLISH_TIMEOUT", "RESEND_AFTER", "ConsumerRunner"]
