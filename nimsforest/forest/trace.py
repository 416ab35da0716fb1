"""W3C trace context on the forest's messages; OpenTelemetry spans only when an OTLP
endpoint is set.

Every River input carries a `traceparent` header: the HTTP request's when it sent a valid
one (its trace goes on through the forest), a new trace otherwise. Each component that
handles a message is one hop, and every message a component stores names it, its node and
the input it answers (`Nimsforest-Hop: tree:contacts@n1 RIVER:7`). So the stored headers
alone are the trace: `nimsforest trace ID` finds the River inputs of the trace and follows
the hop headers from them, with or without a collector.

What the components' outputs carry (Carry):
- with an exporter (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
  set: the standard variables, read by the SDK), or with `OTEL_PROPAGATORS` naming
  `tracecontext`, every hop: a span whose parent is the message's `traceparent` and whose
  own id is the `traceparent` of every output it stores (an http output sends it on);
- with neither (tracing off), only the River inputs: a hop stores no trace context of its
  own, since nothing would read it that the hop header does not already say (a trace
  context on every hop costs about 3% of an event's CPU, in the forest and in nats-server;
  set `OTEL_PROPAGATORS=tracecontext` for receivers that record spans of their own);
- with `OTEL_PROPAGATORS` leaving `tracecontext` out (`none`), nothing: not even the River
  input's (`why` still walks back; `trace` and W3C propagation to receivers are gone;
  spans exported are one root per hop).
Without an exporter the SDK is not even imported. With one, spans are encoded and exported
in a child process (see OtlpTracing), so recording a hop costs the forest's interpreter
one tuple, and a hop that continues one of the forest's own `traceparent`s checks it with
one regular expression and slices its ids out of it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import pickle
import random
import re
import struct
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

TRACEPARENT = "traceparent"
# Who stored the message and, for a component's output, the message it answers:
# `<kind>:<name>@<node> <stream>:<seq>`; a River input names only its way in: `api@<node>`.
HOP_HEADER = "Nimsforest-Hop"
# Where messages stored by earlier versions name their input (`<stream>:<seq>`): read, no
# longer written (one header fewer on every hop: nats-py spends Python calls per header on
# each message it sends and receives).
INPUT_HEADER = "Nimsforest-Input"
OTLP_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
PROPAGATORS_VARIABLE = "OTEL_PROPAGATORS"
# what the variable may name besides `tracecontext` and `none`: OpenTelemetry's other
# propagators, which hops do not carry (`baggage` is in its default list)
_OTHER_PROPAGATORS = frozenset({"baggage", "b3", "b3multi", "jaeger", "xray", "ottrace"})

# version-traceid-parentid-flags (https://www.w3.org/TR/trace-context/#traceparent-header)
_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
# what every hop's own headers hold: version 00, lowercase, sampled or not, ids not all
# zero (checked in the expression: a slice costs as much); read first, its parts sliced out
_OURS = re.compile(r"00-(?!0{32}-)[0-9a-f]{32}-(?!0{16}-)[0-9a-f]{16}-0[01]")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_rand = random.Random()  # ids need to be unique, not secret (as the OpenTelemetry SDK's)


class TraceContext(NamedTuple):
    """One position in a trace: the trace and the span that a message's producer was.
    (Immutable and typed; a named tuple rather than a frozen dataclass because a hop under
    an exporter makes two, and a tuple is built in a third of the time.)"""

    trace_id: str  # 32 lowercase hex digits, not all zero
    span_id: str  # 16 lowercase hex digits, not all zero
    sampled: bool = True

    @classmethod
    def parse(cls, value: str | None) -> TraceContext | None:
        """A `traceparent` header's context, or None when it is missing or invalid (then
        the receiver starts a new trace, as the W3C rules say)."""
        if not value:
            return None
        if _OURS.fullmatch(value) is not None:
            return cls(value[3:35], value[36:52], value[54] == "1")
        m = _TRACEPARENT_RE.match(value) or _TRACEPARENT_RE.match(value.strip().lower())
        if m is None:
            return None
        version, trace_id, span_id, flags, rest = m.groups()
        if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or (
                span_id == _ZERO_SPAN):
            return None
        return cls(trace_id, span_id, flags != "00" and bool(int(flags, 16) & 1))

    @classmethod
    def of(cls, headers: Mapping[str, str] | None) -> TraceContext | None:
        if not headers:
            return None
        value = headers.get(TRACEPARENT)
        if value is None:  # HTTP headers may come in any case
            value = next((v for k, v in headers.items() if k.lower() == TRACEPARENT), None)
        return cls.parse(value)

    @classmethod
    def new(cls) -> TraceContext:
        return cls(f"{_rand.getrandbits(128) or 1:032x}", _span_id())

    def child(self) -> TraceContext:
        """The same trace, a new span: the context of what this hop stores."""
        return TraceContext(self.trace_id, _span_id(), self.sampled)

    @property
    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


def _span_id() -> str:
    """16 random hex digits, not all zero (started and continued draw theirs inline: a
    call is a tenth of a hop's cost)."""
    return f"{_rand.getrandbits(64) or 1:016x}"


def started() -> str:
    """The `traceparent` of a hop that starts a trace (sampled), built in one string."""
    return f"00-{_rand.getrandbits(128) or 1:032x}-{_rand.getrandbits(64) or 1:016x}-01"


def continued(traceparent: str | None) -> str | None:
    """The `traceparent` of what a hop stores, from one of the forest's own (version 00,
    lowercase, flags 00 or 01: what every hop writes) without parsing it: the same trace
    and flags, a new span id. None for any other value (TraceContext.parse reads those)."""
    if traceparent is None or _OURS.fullmatch(traceparent) is None:
        return None
    return f"{traceparent[:36]}{_rand.getrandbits(64) or 1:016x}{traceparent[52:]}"


def hop_name(who: str, node: str) -> str:
    """Who a hop is: a component (`tree:contacts`) or a way into the River (`api`,
    `source:github`), at a node."""
    return f"{who}@{node}" if node else who


def hop_value(who: str, stream: str, seq: int) -> str:
    """`Nimsforest-Hop` on a component's output: who stored it and the input it answers."""
    return f"{who} {stream}:{seq}"


@dataclass(frozen=True, slots=True)
class StoredHop:
    """What a stored message's headers say of the hop that stored it."""

    by: str | None  # `tree:contacts@n1`, `api@n1`, ...
    input: str | None  # `<stream>:<seq>` of the message it answers (None: a River input)

    @classmethod
    def of(cls, headers: Mapping[str, str] | None) -> StoredHop:
        """Read both formats: `Nimsforest-Hop: <who> <stream>:<seq>`, and the older
        `Nimsforest-Hop: <who>` with `Nimsforest-Input: <stream>:<seq>` (stores outlive
        an upgrade)."""
        h = headers or {}
        who, _, given = (h.get(HOP_HEADER) or "").strip().partition(" ")
        return cls(who or None, given.strip() or h.get(INPUT_HEADER) or None)


class Hop:
    """One component handling one message: `traceparent` goes on its outputs (None: hops
    carry no trace context); `end` once the message is acked or failed."""

    __slots__ = ("traceparent",)

    def __init__(self, traceparent: str | None) -> None:
        self.traceparent = traceparent

    @property
    def context(self) -> TraceContext | None:
        """The trace context this hop's outputs carry, read from their `traceparent`."""
        return TraceContext.parse(self.traceparent)

    def headers(self, hop: str) -> dict[str, str]:
        """`hop`: the `Nimsforest-Hop` value (hop_name, or hop_value on an output)."""
        if self.traceparent is None:
            return {HOP_HEADER: hop}
        return {TRACEPARENT: self.traceparent, HOP_HEADER: hop}

    def end(self, error: str | None = None) -> None:
        """Nothing to record without an exporter."""


class _RecordedHop(Hop):
    """A sampled hop under an exporter: `end` hands one tuple to the tracing's batch."""

    __slots__ = ("_attributes", "_name", "_parent", "_record", "_span", "_start", "_trace")

    def __init__(self, traceparent: str | None, trace_id: str, span_id: str, parent: str | None,
                 name: str, attributes: Mapping[str, Any],
                 record: Callable[[SpanRecord], None]) -> None:
        self.traceparent = traceparent  # as Hop's, one call fewer
        self._trace, self._span, self._parent, self._name = trace_id, span_id, parent, name
        self._attributes, self._record = attributes, record
        self._start = time.time_ns()

    def end(self, error: str | None = None) -> None:
        self._record((self._name, self._trace, self._span, self._parent, self._start,
                      time.time_ns(), self._attributes, error))


# What the exporter process gets per span: name, trace id, span id, parent span id (None
# for a root), start and end (ns since the epoch), attributes, error text (None: ok).
SpanRecord = tuple[str, str, str, str | None, int, int, Mapping[str, Any], str | None]


class Carry(enum.Enum):
    """What of the W3C trace context the forest's messages carry."""

    EVERY_HOP = "every hop"  # River inputs and every component's outputs
    RIVER = "river inputs"  # River inputs only: tracing off (`trace` follows the hop headers)
    NOTHING = "nothing"  # OTEL_PROPAGATORS without tracecontext


class TracingState(enum.Enum):
    OFF = "off"  # no OTLP endpoint: messages carry the headers, nothing is recorded
    STARTING = "starting"
    EXPORTING = "exporting"
    RESTARTING = "restarting"  # the exporter process stopped; it is started again shortly
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class TracingStatus:
    state: TracingState
    sentence: str
    carries: Carry = Carry.RIVER  # what of the trace context messages carry
    spans: int = 0  # spans handed to the exporter process
    dropped: int = 0  # spans dropped because the exporter was behind or down
    restarts: int = 0  # times the exporter process was started again after it stopped


class Tracing:
    """The node's tracing: without an exporter, messages only carry the headers (the trace
    context as `carry` says)."""

    enabled = False

    def __init__(self, carry: Carry = Carry.RIVER) -> None:
        self.carry = carry
        self.carried = carry is not Carry.NOTHING  # a sender's trace context is taken on
        self._on_hops = carry is Carry.EVERY_HOP  # components' outputs carry theirs

    def parent(self, headers: Mapping[str, str] | None) -> TraceContext | None:
        """The trace context a message or request came with, when one is taken on."""
        return TraceContext.of(headers) if self.carried else None

    def hop(self, name: str, parent: TraceContext | None, attributes: Mapping[str, Any]) -> Hop:
        """A hop whose parent is `parent` (a request's context; None: it starts a trace):
        a River input's, which carries a trace context unless `carry` is NOTHING."""
        if not self.carried:
            return NO_HOP
        return Hop(parent.child().header if parent is not None else started())

    def hop_on(self, name: str, headers: Mapping[str, str] | None,
               attributes: Mapping[str, Any]) -> Hop:
        """A component's hop on a message with these headers: with EVERY_HOP it continues
        their trace (or starts one; the forest's own `traceparent` is not parsed), else its
        outputs name only the hop."""
        if not self._on_hops:
            return NO_HOP
        mine = continued(headers.get(TRACEPARENT)) if headers else None
        if mine is not None:
            return Hop(mine)
        return self.hop(name, TraceContext.of(headers), attributes)

    async def start(self) -> None:
        """Nothing to start."""

    async def ready(self, timeout: float) -> bool:
        """Whether spans are being exported (waiting up to `timeout` for the exporter to
        have started): nothing to wait for here."""
        return True

    async def stop(self) -> None:
        """Nothing to flush."""

    def status(self) -> TracingStatus:
        sentence = {
            Carry.NOTHING: "tracing is off: no OTLP endpoint is set, and messages carry no "
                           f"trace context ({PROPAGATORS_VARIABLE})",
            Carry.RIVER: "tracing is off (no OTLP endpoint is set); River inputs carry their "
                         "trace context, and the hop headers lead from them",
            Carry.EVERY_HOP: "tracing is off (no OTLP endpoint is set); every hop carries its "
                             f"trace context ({PROPAGATORS_VARIABLE})",
        }[self.carry]
        return TracingStatus(TracingState.OFF, sentence, carries=self.carry)


class OtlpTracing(Tracing):
    """Spans exported over OTLP/HTTP. A hop records one tuple in the event loop; a child
    process (`python -m nimsforest.spanexport`) encodes them as OTLP requests and sends
    them with the SDK's OTLP exporter, so no per-span encoding is done by the interpreter
    that runs the forest.

    The SDK reads the standard variables: `OTEL_EXPORTER_OTLP_*` (in the exporter process)
    for where, `OTEL_TRACES_SAMPLER(_ARG)` (here) for how many. A trace's sampling is
    decided where it starts; a hop under a parent-based sampler follows its parent's flag
    (a hop sampled out costs what a hop without an exporter does, its ids still go on)."""

    enabled = True
    BATCH = 2048  # spans per frame to the exporter process
    FLUSH_EVERY = 0.5  # seconds: the longest a recorded span waits for its frame
    MAX_BUFFERED = 4 << 20  # bytes waiting for the exporter process before spans are dropped
    RESTART_AFTER = (1.0, 30.0)  # the exporter process's restart delay: first, longest
    READY_WITHIN = 30.0  # seconds for a started exporter process to say it is ready

    def __init__(self, service: str, node: str, endpoint: str | None = None,
                 carried: bool = True) -> None:
        """`endpoint`: the traces URL (…/v1/traces); else the standard variables say.
        `carried`: every hop carries its trace context (else none does, and each span is
        the root of a trace of its own)."""
        super().__init__(Carry.EVERY_HOP if carried else Carry.NOTHING)
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased
        from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

        self._argv = [sys.executable, "-m", "nimsforest.spanexport", service, node,
                      *([endpoint] if endpoint else [])]
        self._sampler = TracerProvider().sampler  # from OTEL_TRACES_SAMPLER(_ARG), as the SDK
        self._parent_based = isinstance(self._sampler, ParentBased)
        self._remote = lambda p: trace.set_span_in_context(NonRecordingSpan(SpanContext(
            int(p.trace_id, 16), int(p.span_id, 16), is_remote=True,
            trace_flags=TraceFlags(1 if p.sampled else 0))))
        self._batch: list[SpanRecord] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._exporting = asyncio.Event()
        self._state, self._sentence = TracingState.STARTING, "starting the span exporter"
        self._spans = self._dropped = self._restarts = 0
        self._log = logging.getLogger("nimsforest.forest.trace")

    def _sampled(self, name: str, parent: TraceContext | None, trace_id: str) -> bool:
        if parent is not None and self._parent_based:
            return parent.sampled
        context = self._remote(parent) if parent is not None else None
        return self._sampler.should_sample(context, int(trace_id, 16), name).decision.is_sampled()

    def hop(self, name: str, parent: TraceContext | None, attributes: Mapping[str, Any]) -> Hop:
        if not self.carried:  # nothing is taken from what came in: each hop a trace
            parent = None
        ctx = parent.child() if parent is not None else TraceContext.new()  # parent's flag
        sampled = self._sampled(name, parent, ctx.trace_id)
        if sampled is not ctx.sampled:
            ctx = TraceContext(ctx.trace_id, ctx.span_id, sampled)
        header = ctx.header if self.carried else None
        if not sampled:
            return Hop(header)
        return _RecordedHop(header, ctx.trace_id, ctx.span_id,
                            parent.span_id if parent is not None else None, name, attributes,
                            self._record)

    def hop_on(self, name: str, headers: Mapping[str, str] | None,
               attributes: Mapping[str, Any]) -> Hop:
        value = headers.get(TRACEPARENT) if headers and self.carried else None
        # one of the forest's own under a parent-based sampler (the default): its flag
        # decides, and its ids are sliced out of it rather than parsed into a context
        header = continued(value) if self._parent_based else None
        if header is None or value is None:
            return self.hop(name, self.parent(headers), attributes)  # the span needs its parent
        if header[54] == "0":  # sampled out where the trace started: ids go on
            return Hop(header)
        return _RecordedHop(header, header[3:35], header[36:52], value[36:52], name, attributes,
                            self._record)

    def _record(self, span: SpanRecord) -> None:
        self._batch.append(span)
        if len(self._batch) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        """Hand the batch to the exporter process without waiting: a frame is written to
        its stdin's transport; while the process is behind or down the batch is dropped."""
        batch, self._batch = self._batch, []
        if not batch:
            return
        proc = self._proc
        stdin = proc.stdin if proc is not None and proc.returncode is None else None
        if stdin is None or stdin.is_closing() or (
                stdin.transport.get_write_buffer_size() > self.MAX_BUFFERED):
            self._dropped += len(batch)
            return
        frame = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        stdin.write(struct.pack("!I", len(frame)) + frame)
        self._spans += len(batch)

    async def _spawn(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            start_new_session=True)  # a terminal's ^C stops the node, which then ends it

    async def _ready(self) -> bool:
        """Wait for the exporter process's `ready` (its imports take a few hundred ms of a
        core; spans recorded meanwhile wait in its stdin): False when it stopped, stayed
        silent for READY_WITHIN, or the node is stopping."""
        proc = self._proc
        if proc is None or proc.stdout is None:
            return False
        said = asyncio.ensure_future(proc.stdout.readline())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((said, stopping), timeout=self.READY_WITHIN,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not said.done():
                said.cancel()
        return (said.done() and not said.cancelled() and said.exception() is None
                and said.result().strip() == b"ready")

    def _set(self, state: TracingState, sentence: str, level: int = logging.INFO) -> None:
        if state is not self._state:
            self._log.log(level, "%s", sentence)
        self._state, self._sentence = state, sentence
        if state is TracingState.EXPORTING:
            self._exporting.set()
        else:
            self._exporting.clear()

    async def start(self) -> None:
        """Start the exporter process; the node does not wait for it to be ready."""
        await self._spawn()
        self._task = asyncio.create_task(self._run(), name="span-export")

    async def ready(self, timeout: float) -> bool:
        return await _set_within(self._exporting, timeout)

    async def _run(self) -> None:
        """Wait for the exporter process to be ready; flush every FLUSH_EVERY; start it
        again when it stopped."""
        delay = self.RESTART_AFTER[0]
        if await self._ready():
            self._set(TracingState.EXPORTING, "exporting spans over OTLP")
        while not await self._stopped_within(self.FLUSH_EVERY):
            try:
                proc = self._proc
                if proc is None or proc.returncode is not None:
                    code = proc.returncode if proc is not None else None
                    self._set(TracingState.RESTARTING,
                              f"the span exporter process stopped (exit {code}); starting it "
                              f"again in {delay:.0f}s, spans are dropped until then",
                              logging.WARNING)
                    if await self._stopped_within(delay):
                        return
                    await self._spawn()
                    ready = await self._ready()
                    self._restarts += 1
                    delay = min(delay * 2, self.RESTART_AFTER[1])
                    if ready:
                        self._set(TracingState.EXPORTING, "exporting spans over OTLP again")
                else:
                    delay = self.RESTART_AFTER[0]
                self._flush()
            except Exception as exc:  # noqa: BLE001 - tracing never stops the node
                self._set(TracingState.RESTARTING, f"the span exporter failed: {exc}",
                          logging.WARNING)

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait `seconds`, or less when stop() is called: True when it was."""
        return await _set_within(self._stopping, seconds)

    async def stop(self) -> None:
        """Hand over what is recorded, let the exporter process export it, then end it."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        self._flush()
        proc = self._proc
        if proc is not None and proc.returncode is None and proc.stdin is not None:
            proc.stdin.close()
            try:
                async with asyncio.timeout(15):  # the SDK's export timeout is 10 s
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        self._set(TracingState.STOPPED, "the span exporter stopped")

    @property
    def exporter_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def status(self) -> TracingStatus:
        return TracingStatus(self._state, self._sentence, self.carry, self._spans,
                             self._dropped, self._restarts)


async def _set_within(event: asyncio.Event, seconds: float) -> bool:
    """Whether `event` is set within `seconds` (waiting no longer than it takes)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


NO_TRACING = Tracing()
# a hop whose outputs carry no trace context and which records nothing: one for all
NO_HOP = Hop(None)


@dataclass(frozen=True, slots=True)
class Propagation:
    """What `OTEL_PROPAGATORS` says: whether the W3C trace context is carried, whether the
    variable names it (then on every hop, even without an exporter), and the sentence for
    what it names that is not carried (None: nothing to say)."""

    carried: bool
    named: bool = False
    unknown: str | None = None

    @classmethod
    def of(cls, value: str | None) -> Propagation:
        names = [n.strip().lower() for n in (value or "").split(",") if n.strip()]
        if not names:  # unset or empty: OpenTelemetry's default, which has tracecontext
            return cls(True)
        carried = "tracecontext" in names
        others = [n for n in names if n not in ("tracecontext", "none", "baggage")]
        if not others:
            return cls(carried, carried)
        unknown = [n for n in others if n not in _OTHER_PROPAGATORS]
        what = (f"names {', '.join(unknown)}, which OpenTelemetry has no propagator of"
                if unknown else f"names {', '.join(others)}, which hops do not carry")
        return cls(carried, carried, f"{PROPAGATORS_VARIABLE}={value} {what}; hops carry "
                                     f"{'the W3C trace context only' if carried else 'no trace context'}.")

    def carry(self, exporting: bool) -> Carry:
        """What messages carry, with an exporter or without one."""
        if not self.carried:
            return Carry.NOTHING
        return Carry.EVERY_HOP if exporting or self.named else Carry.RIVER


def tracing_from_env(env: Mapping[str, str], service: str, node: str) -> Tracing:
    """OTLP export when one of the standard endpoint variables is set, and the trace
    context on every hop; headers only else, the trace context on River inputs (on every
    hop when `OTEL_PROPAGATORS` names `tracecontext`); none when it leaves it out."""
    propagation = Propagation.of(env.get(PROPAGATORS_VARIABLE))
    if propagation.unknown is not None:
        logging.getLogger("nimsforest.forest.trace").warning("%s", propagation.unknown)
    exporting = any(env.get(v) for v in OTLP_VARIABLES)
    carry = propagation.carry(exporting)
    if exporting:  # EVERY_HOP or NOTHING
        return OtlpTracing(service, node, carried=carry is Carry.EVERY_HOP)
    return Tracing(carry)


__all__ = [
    "HOP_HEADER",
    "INPUT_HEADER",
    "NO_HOP",
    "NO_TRACING",
    "OTLP_VARIABLES",
    "PROPAGATORS_VARIABLE",
    "TRACEPARENT",
    "Carry",
    "Hop",
    "OtlpTracing",
    "Propagation",
    "StoredHop",
    "TraceContext",
    "Tracing",
    "TracingState",
    "TracingStatus",
    "continued",
    "hop_name",
    "hop_value",
    "tracing_from_env",
]
