"""Each node's status report, published to the KV bucket STATUS and heard by every node.

Contract:
- every `interval` seconds the node puts its `NodeReport` (its own status, zone and
  resources) under its name in STATUS (`$KV.STATUS.<node>`); the bucket keeps one value
  per key for FORGET_AFTER seconds, replicated like the other buckets;
- every node hears the others' reports through a core subscription on `$KV.STATUS.*`
  (a put is a message on that subject, so it arrives even while the bucket cannot store
  it) and, at start, reads what the bucket holds;
- the loop keeps going through errors, says in one sentence what it does (`status()`,
  logged when its state changes), and never holds the node up: a report that cannot be
  stored is sent again next interval.
The merge of the reports is pure (control/_cluster_view.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psutil
from pydantic import ValidationError

from nimsforest.control._cluster_view import Heard
from nimsforest.control._schemas import (
    NodeReport,
    NodeResources,
    ReportsOut,
    ReportState,
    StatusOut,
)
from nimsforest.streams import NODE_TAG, ensure_stream, kv_spec
from nimsforest.tasks import cancel_and_wait

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

log = logging.getLogger("nimsforest.control")

STATUS_BUCKET = "STATUS"
INTERVAL = 2.0  # seconds between two reports of a node
STALE_AFTER = 3  # intervals without a report: the node is silent
FORGET_AFTER = 600.0  # seconds: a report older than this is gone (the bucket's TTL)
SPEC = kv_spec(STATUS_BUCKET, history=1, ttl=FORGET_AFTER,
               description="NimsForest node status reports (one key per node)")
SUBJECT = f"$KV.{STATUS_BUCKET}."


class ResourceMeter:
    """CPU and memory of this process and its children (the nats-server it runs)."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._procs: dict[int, psutil.Process] = {}  # kept: cpu_percent measures since last call

    def sample(self) -> NodeResources:
        try:
            children = self._me.children()
        except psutil.Error:
            children = []
        procs = {p.pid: self._procs.get(p.pid, p) for p in [self._me, *children]}
        self._procs = procs
        cpu = 0.0
        rss = 0
        for p in procs.values():
            with contextlib.suppress(psutil.Error):
                cpu += p.cpu_percent(None)
                rss += p.memory_info().rss
        vm = psutil.virtual_memory()
        return NodeResources(cpu_percent=round(cpu, 1), memory_bytes=rss,
                             host_memory_percent=vm.percent, host_memory_bytes=vm.total,
                             cpus=psutil.cpu_count())


class ReportBoard:
    """Publishes this node's report and keeps the last report heard from every node."""

    def __init__(self, nc: Client, node: str, own: Callable[[], StatusOut], *,
                 zone: str | None = None, interval: float = INTERVAL, replicas: int = 1,
                 placement_tags: tuple[str, ...] | None = (NODE_TAG,)) -> None:
        self.node, self.zone, self.interval = node, zone, interval
        self._nc = nc
        self._js = nc.jetstream()
        self._own = own
        self._replicas, self._tags = replicas, placement_tags
        self._meter = ResourceMeter()
        self._resources = self._meter.sample()  # sampled once a report: cpu since the last
        self._heard: dict[str, Heard] = {}
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._state, self._sentence = ReportState.STARTING, "no report sent yet"
        self._bucket_ready = False
        self._stopping = asyncio.Event()
        self._bad: dict[str, float] = {}  # subject -> when a bad report from it was last logged

    @property
    def stale_after(self) -> float:
        return STALE_AFTER * self.interval

    @property
    def forget_after(self) -> float:
        return FORGET_AFTER

    # life ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping.clear()
        self._sub = await self._nc.subscribe(SUBJECT + "*", cb=self._on_report)
        self._task = asyncio.create_task(self._loop(), name="status-reports")

    async def stop(self) -> None:
        """Ends the loop (a cancellation nats-py turns into an error inside a publish does
        not keep it going: the loop also looks at `_stopping`)."""
        self._stopping.set()
        if self._task is not None:
            await cancel_and_wait([self._task], owner="the status report loop")
            self._task = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    # views --------------------------------------------------------------------------------
    def report(self) -> NodeReport:
        """This node's report, now (its resources as of the last report sent)."""
        return NodeReport(node=self.node, zone=self.zone, at=datetime.now(UTC),
                          interval=self.interval, resources=self._resources,
                          status=self._own().model_copy(update={"reports": self.status()}))

    def heard(self) -> tuple[Heard, ...]:
        return tuple(self._heard.values())

    def status(self) -> ReportsOut:
        return ReportsOut(state=self._state, sentence=self._sentence, interval=self.interval)

    # internals ----------------------------------------------------------------------------
    def _say(self, state: ReportState, sentence: str) -> None:
        if (state, sentence) != (self._state, self._sentence):
            (log.info if state is ReportState.REPORTING else log.warning)(
                "Status reports: %s", sentence)
        self._state, self._sentence = state, sentence

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._publish_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop lives on; said once
                if self._stopping.is_set():
                    return
                from natsembed.errors import reason

                self._say(ReportState.NOT_STORED,
                          f"the report of node {self.node} was not stored in {STATUS_BUCKET}: "
                          f"{reason(exc)}; sent again every {self.interval:g}s")
            with contextlib.suppress(TimeoutError):  # not wait_for: it can swallow a cancel
                async with asyncio.timeout(self.interval):
                    await self._stopping.wait()

    async def _publish_once(self) -> None:
        if not self._bucket_ready:
            await ensure_stream(self._js, SPEC, self._replicas, self._tags, rescale=False)
            self._bucket_ready = True
            await self._read_bucket()
        self._resources = self._meter.sample()
        now = time.time()
        for name in [n for n, h in self._heard.items() if now - h.at > FORGET_AFTER]:
            del self._heard[name]  # gone for good (its key expired from the bucket too)
        data = self.report().model_dump_json().encode()
        await self._js.publish(SUBJECT + self.node, data, timeout=2.0)
        self._say(ReportState.REPORTING,
                  f"node {self.node} reports to {STATUS_BUCKET} every {self.interval:g}s; "
                  f"{len(self._heard)} other node(s) heard")

    async def _read_bucket(self) -> None:
        """What the bucket holds from before this node started (each as of its own time)."""
        from nats.js.errors import NoKeysError

        kv = await self._js.key_value(STATUS_BUCKET)
        try:
            keys = await kv.keys()
        except NoKeysError:
            return
        for key in keys:
            if key == self.node or key in self._heard:
                continue
            with contextlib.suppress(Exception):
                entry = await kv.get(key)
                if entry.value:
                    report = NodeReport.model_validate_json(entry.value)
                    self._heard.setdefault(key, Heard(report, min(time.time(),
                                                                  report.at.timestamp())))

    async def _on_report(self, msg: Msg) -> None:
        if msg.subject == SUBJECT + self.node:
            return
        if not msg.data:  # a delete or purge of the key: that node is gone
            self._heard.pop(msg.subject[len(SUBJECT):], None)
            return
        try:
            report = NodeReport.model_validate_json(msg.data)
        except ValidationError as exc:
            now = time.monotonic()
            if now - self._bad.get(msg.subject, -1e9) > 60:
                self._bad[msg.subject] = now
                log.warning("A status report on %s is not one: %s", msg.subject,
                            exc.errors()[0].get("msg", exc))
            return
        self._heard[report.node] = Heard(report, time.time())


__all__ = ["FORGET_AFTER", "INTERVAL", "STATUS_BUCKET", "ReportBoard", "ResourceMeter"]
