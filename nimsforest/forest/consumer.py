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

Pulling is continuous: pull requests stay outstanding for up to `max_inflight` messages
and are renewed as messages complete; server heartbeats are watched so a lost request
(reconnect, server restart) is replaced. Publish acks are awaited, in order, by one
completer task per consumer (no task per message on the synchronous path).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from nats.js.errors import APIError

from nimsforest import metrics
from nimsforest.forest.delivery import ConsumerSpec, Delivery, Handler, NeedsAsync, Stats
from nimsforest.forest.errors import BadEvent, EventError
from nimsforest.forest.publisher import Publisher

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

EXPIRES = 30.0
HEARTBEAT = 5.0
PUBLISH_TIMEOUT = 10.0


class _Job:
    __slots__ = ("d", "futures", "published_at", "t0", "touched")

    def __init__(self, d: Delivery, t0: float) -> None:
        self.d, self.t0, self.touched = d, t0, time.monotonic()
        self.futures: list[asyncio.Future[Any]] = []
        self.published_at = 0.0


class _Handed(Exception):
    pass


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
        self._log = logging.getLogger(f"nimsforest.forest.{kind}")
        self._rl = _RateLimitedLog(self._log)
        self._m_in = metrics.component_events_in.labels(kind, name)
        self._m_out = metrics.component_events_out.labels(kind, name)
        self._m_err = metrics.component_errors.labels(kind, name)
        self._m_lat = metrics.component_latency.labels(kind, name)
        self._stored = getattr(handler, "stored", None)
        self._retry_async = getattr(handler, "retry_async", None)
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"
        self._inbox = ""
        self._subs: list[Any] = []
        self._credits = 0
        self._inflight: dict[int, _Job] = {}  # id(msg) -> job
        self._queue: asyncio.Queue[tuple[_Job, BaseException | None]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._last_seen = time.monotonic()
        self._stopping = False
        self._exported = (
            stats.events_in,
            stats.events_out,
        )  # already added to the Prometheus counters

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
        self._subs = [
            await self._nc.subscribe(
                self._inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
            ),
            await self._nc.subscribe(
                f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.spec.stream}.{self.spec.durable}",
                cb=self._on_max_deliveries,
            ),
        ]
        self._last_seen = time.monotonic()
        self._background = [
            asyncio.create_task(self._complete_loop(), name=f"complete-{self.spec.durable}"),
            asyncio.create_task(self._watch(), name=f"watch-{self.spec.durable}"),
        ]
        self._request_more()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop pulling; let in-flight events finish for up to `grace` seconds; nak the rest
        so another node (or the next start) gets them at once."""
        self._stopping = True
        for sub in self._subs:
            try:  # no more pull interest; already-queued messages get nak'd
                await asyncio.wait_for(sub.drain(), max(grace, 0.5))
            except Exception:  # noqa: BLE001, S110 - connection may be gone already
                pass
        self._subs = []
        deadline = time.monotonic() + grace
        while (self._tasks or self._inflight) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for task in [*self._tasks, *self._background]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._background, return_exceptions=True)
        for job in list(self._inflight.values()):
            await self._quietly(job.d.msg.nak())
        self._inflight.clear()
        self._export()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # pulling --------------------------------------------------------------------------
    def _request_more(self) -> None:
        if self._stopping or not self._subs:
            return
        free = self.spec.max_inflight - len(self._inflight) - self._credits
        if free <= 0 or (self._credits > 0 and free < max(1, self.spec.max_inflight // 2)):
            return
        self._credits += free
        self._spawn(self._send_request(free))

    async def _send_request(self, batch: int) -> None:
        req = {
            "batch": batch,
            "expires": int(EXPIRES * 1e9),
            "idle_heartbeat": int(HEARTBEAT * 1e9),
        }
        try:
            await self._nc.publish(self._next_subject, json.dumps(req).encode(), reply=self._inbox)
        except Exception:  # noqa: BLE001 - disconnected; the watchdog asks again
            self._credits = max(0, self._credits - batch)

    def _on_status(self, msg: Msg, status: str) -> None:
        if status == "100":
            return
        headers = msg.headers or {}
        pending = headers.get("Nats-Pending-Messages")
        if pending is not None and pending.isdigit():
            self._credits = max(0, self._credits - int(pending))
        elif status != "404":
            self._credits = 0
        desc = next(
            (str(v) for k, v in headers.items() if str(k).lower().endswith("description")), ""
        )
        if status == "409" and "deleted" in desc.lower():
            self._log.warning(
                "%s: its consumer %s was deleted; recreating it", self._label, self.spec.durable
            )
            self._spawn(self._recreate())
            return
        if status in ("404", "408"):
            self._request_more()
        else:  # e.g. 409 Exceeded MaxWaiting, Leadership Change: the watchdog asks again later
            self._log.debug("%s: pull status %s %s", self._label, status, desc)

    async def _recreate(self) -> None:
        try:
            await self.ensure_consumer()
        except Exception as exc:  # noqa: BLE001 - the watchdog retries
            self._log.warning(
                "%s: cannot recreate consumer %s: %s", self._label, self.spec.durable, exc
            )
        self._credits = 0
        self._request_more()

    async def _watch(self) -> None:
        """Lost pull requests, slow handlers (in-progress acks) and publish timeouts."""
        period = max(0.05, min(HEARTBEAT, self.spec.ack_wait / 3))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            if self._credits > 0 and now - self._last_seen > 3 * HEARTBEAT:
                self._log.info(
                    "%s: no word from JetStream for %.0fs; asking again",
                    self._label,
                    now - self._last_seen,
                )
                self._last_seen = now
                await self._recreate()
            elif self._credits == 0:
                self._request_more()
            for job in list(self._inflight.values()):
                if job.published_at and now - job.published_at > PUBLISH_TIMEOUT:
                    for f in job.futures:
                        if not f.done():
                            f.set_exception(
                                TimeoutError("JetStream did not confirm the outputs in time")
                            )
                elif now - job.touched > self.spec.ack_wait / 3:
                    job.touched = now
                    self._spawn(self._quietly(job.d.msg.in_progress()))

    # handling -------------------------------------------------------------------------
    async def _on_msg(self, msg: Msg) -> None:
        self._last_seen = time.monotonic()
        headers = msg.headers
        if headers and (status := headers.get("Status")):
            self._on_status(msg, status)
            return
        if not msg.reply:
            return
        self._credits = max(0, self._credits - 1)
        if self._stopping:
            await self._quietly(msg.nak())
            return
        try:
            job = _Job(Delivery(msg), time.perf_counter())
        except (ValueError, IndexError):  # not a JetStream delivery
            return
        self._inflight[id(msg)] = job
        self.stats.events_in += 1
        if self._handler.is_async:
            self._spawn(self._run_async(job))
            return
        try:
            outputs = self._handler.handle_sync(job.d)
            await self._publish(job, outputs)
        except NeedsAsync:
            self._spawn(self._run_async(job))
            return
        except Exception as exc:  # noqa: BLE001 - reported per event
            self._queue.put_nowait((job, exc))
            return
        self._queue.put_nowait((job, None))

    async def _publish(self, job: _Job, outputs: Any) -> None:
        publish = self._pub.publish
        for o in outputs:
            headers = o.headers
            if o.msg_id:
                headers = {**(headers or {}), "Nats-Msg-Id": o.msg_id}
            job.futures.append(await publish(o.subject, o.payload, headers))
        job.published_at = time.monotonic()

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
                await self._complete(job, exc)
            except _Handed:
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

    async def _complete(self, job: _Job, exc: BaseException | None) -> None:
        if exc is None:
            for f in job.futures:
                try:
                    await f
                except asyncio.CancelledError:
                    if not f.cancelled():
                        raise  # this task is being cancelled
                    exc = TimeoutError(
                        "the connection closed before JetStream confirmed the outputs"
                    )
                    break
                except Exception as e:  # noqa: BLE001 - not stored: retry the event
                    exc = e
                    break
        if exc is None:
            if self._stored is not None and job.futures:
                self._stored(job.d, [f.result() for f in job.futures])
            await self._quietly(job.d.msg.ack())
            self.stats.events_out += len(job.futures)
            self._m_lat.observe(time.perf_counter() - job.t0)
        elif self._retry_async is not None and self._retry_async(job.d, exc):
            job.futures, job.published_at = [], 0.0
            self._spawn(self._run_async(job))
            raise _Handed
        else:
            await self._failed(job.d, exc)

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
                f"{self._label}: {where} failed (attempt {d.num_delivered} of "
                f"{self.spec.max_deliver}), retrying in {delay:g}s: {text}",
            )
        if not isinstance(exc, EventError):
            self._log.debug("%s: %s", self._label, text, exc_info=exc)

    async def _on_max_deliveries(self, msg: Msg) -> None:
        """JetStream itself gave up (the last attempt's node died before it could answer)."""
        try:
            seq = json.loads(msg.data).get("stream_seq", "?")
        except ValueError:
            seq = "?"
        self.stats.dead += 1
        self._log.warning(
            "%s: JetStream gave up on %s #%s after %d deliveries",
            self._label,
            self.spec.stream,
            seq,
            self.spec.max_deliver,
        )

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


__all__ = ["PUBLISH_TIMEOUT", "ConsumerRunner"]
