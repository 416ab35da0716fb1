"""The vocabulary shared by the consumer runner and the component handlers."""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

if TYPE_CHECKING:
    from nats.aio.msg import Msg


# How long a JetStream publish (an output, a Soil write) may take before its event fails.
PUBLISH_TIMEOUT = 10.0
# A publish stored under a message id and not confirmed after this long is sent again under
# the same id (the stream drops a second copy): a publish that went to a stream leader that
# then froze or died is never answered, and waiting PUBLISH_TIMEOUT for it would hold the
# event seconds after a new leader was elected.
RESEND_AFTER = 1.0


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
    """A message to store (JetStream publish) before the input is acked."""

    subject: str
    payload: bytes
    msg_id: str | None = None
    headers: dict[str, str] | None = None


class Handoff(enum.Enum):
    """What `handle_sync` returns instead of outputs to pass one message on."""

    ASYNC = "async"  # handle this one message with `handle_async` instead


class Delivery:
    """One delivered message, with its stream position parsed once from the reply
    subject ($JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>,
    or the longer form with domain and account hash)."""

    __slots__ = ("data", "headers", "msg", "num_delivered", "stream_seq", "subject", "traceparent")

    def __init__(self, msg: Msg) -> None:
        self.msg = msg
        # this hop's W3C `traceparent`, set by the runner (outputs send it on); None: none
        self.traceparent: str | None = None
        self.data: bytes = msg.data
        self.subject: str = msg.subject
        self.headers: dict[str, str] = msg.headers or {}
        tokens = msg.reply.split(".")
        base = 2 if len(tokens) == 9 else 4
        self.num_delivered = int(tokens[base + 2])
        self.stream_seq = int(tokens[base + 3])


@dataclass
class Stats:
    """A component's counters on this node (what /metrics exports and its status shows).

    `events_out` is written once for every event the component completed successfully
    (the consumer runner on each ack, `+= 0` when it emitted nothing; the River and the
    source loops on each input stored), so writing it also stamps `last_ok_at`: the last
    success, which tells whether `last_error` still holds (docs/OBSERVABILITY.md)."""

    events_in: int = 0
    dropped: int = 0
    errors: int = 0
    dead: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    started_at: datetime | None = None
    prompt_tokens: int = 0  # nims: tokens their brains' answers cost
    completion_tokens: int = 0
    cost: float = 0.0
    _out: int = 0
    _ok_at: float = 0.0  # time.time() of the last success (0: none yet)

    @property
    def events_out(self) -> int:
        return self._out

    @events_out.setter
    def events_out(self, value: int) -> None:
        self._out = value
        self._ok_at = time.time()

    @property
    def last_ok_at(self) -> datetime | None:
        return datetime.fromtimestamp(self._ok_at, UTC) if self._ok_at else None

    def error(self, text: str) -> None:
        self.errors += 1
        self.last_error = text
        self.last_error_at = datetime.now(UTC)


class Handler:
    """What a component gives the runner; every hook is declared here.

    When `is_async` is False, `handle_sync` runs in the subscription callback, in order
    (Lua, rules); it returns the outputs, or `Handoff.ASYNC` to hand this one message to
    `handle_async`. Otherwise `handle_async` runs as one task per message (LLM brains).
    Both return the outputs to store before the message is acked; an empty result acks
    with nothing to emit. An exception fails the attempt (retried until max_deliver);
    `BadEvent` ends it at once.

    Hooks with defaults: `stored(d, pub_acks)` runs after the outputs are stored (no-op);
    `retry_async(d, exc)` says whether a failed publish goes to `handle_async` at once
    (never, by default). `hop_headers`: whether the outputs carry the hop's trace headers
    (`traceparent`, `Nimsforest-Hop`; every component's do but the Decomposer's).
    """

    is_async: bool = False
    hop_headers: bool = True

    def handle_sync(self, d: Delivery) -> Sequence[Output] | Handoff:
        return Handoff.ASYNC

    async def handle_async(self, d: Delivery) -> Sequence[Output]:
        raise NotImplementedError(f"{type(self).__name__} handles every message synchronously")

    async def attach(self, js: Any) -> None:
        """Called once before the component starts, with JetStream (a nim opens its answer
        cache here); no-op by default."""

    def stored(self, d: Delivery, acks: Sequence[Any]) -> None:
        """The outputs of `d` are stored; `acks` are JetStream's publish acks, in order."""

    def retry_async(self, d: Delivery, exc: BaseException) -> bool:
        return False


__all__ = [
    "PUBLISH_TIMEOUT",
    "RESEND_AFTER",
    "ConsumerSpec",
    "Delivery",
    "Handler",
    "Handoff",
    "Output",
    "Stats",
]
