"""Continuous pulling from one durable consumer: pull requests stay outstanding for up
to `max_inflight` messages and are renewed as messages complete; server heartbeats are
watched so that a lost request (reconnect, server restart) is replaced, and a consumer
deleted under us is recreated.

A pull request lives only on the consumer's leader: a new leader (the old one died or
froze, a step-down) knows none of them. So when JetStream says the consumer elected a
leader (its LEADER_ELECTED advisory) the requests are asked again at once; the heartbeat
watch is the fallback, and it never waits for JetStream itself (making sure the consumer
exists runs on the side: with the meta leader frozen that request takes its whole
timeout)."""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from nats.js.errors import APIError

from nimsforest.forest.delivery import ConsumerSpec

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

# How long one pull request lives on the consumer's leader. Short, because a request from a
# node whose own nats-server froze (SIGSTOP, a stalled VM) stays on a healthy leader, which
# keeps handing it messages that reach nobody until the server resumes (each redelivered
# only after ack_wait, perhaps to the same dead request). A request that expires is
# replaced at once, so a short life costs one small request and one 408 status per
# consumer and node every EXPIRES seconds; the idle heartbeat must stay <= half of it.
EXPIRES = 2.5
# The server's idle heartbeat on an outstanding pull. A pull dies with its consumer's
# leader (a node killed, a leader change); after STALLED_AFTER without a word it is asked
# again, so a consumer resumes within seconds of a new leader, not at the next expiry.
# The cost is one tiny status message a second per idle consumer.
HEARTBEAT = 1.0
STALLED_AFTER = 3 * HEARTBEAT
LEADER_ELECTED = "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{stream}.{consumer}"


class PullStatus(enum.Enum):
    """What a status message on a pull subscription says (JetStream's pull protocol: a
    `Status` header, and for 409 a fixed description), read once, here."""

    HEARTBEAT = "100"
    NO_MESSAGES = "404"
    REQUEST_TIMEOUT = "408"
    CONSUMER_DELETED = "409 consumer deleted"
    OTHER = "other"  # e.g. 409 Exceeded MaxWaiting, 409 Leadership Change

    @classmethod
    def of(cls, status: str, description: str) -> PullStatus:
        if status == "409":
            deleted = "deleted" in description.lower()  # "Consumer Deleted"
            return cls.CONSUMER_DELETED if deleted else cls.OTHER
        return next((k for k in cls if k.value == status), cls.OTHER)


class Puller:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        spec: ConsumerSpec,
        on_message: Callable[[Msg], Awaitable[None]],
        spawn: Callable[[Awaitable[Any]], None],
        log: logging.Logger,
        label: str,
        ask: Callable[[], None],
    ) -> None:
        """`ask`: request more now (the runner's request with its in-flight count)."""
        self._nc, self._js, self.spec = nc, js, spec
        self._on_message, self._spawn, self._log, self._label = on_message, spawn, log, label
        self._ask = ask
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"
        self._inbox = ""
        self._sub: Any = None
        self._elected: Any = None
        self.credits = 0  # messages asked for and not yet received
        self.last_seen = time.monotonic()

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
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            self._inbox, cb=self._on_raw, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        self._elected = await self._nc.subscribe(
            LEADER_ELECTED.format(stream=self.spec.stream, consumer=self.spec.durable),
            cb=self._on_elected,
        )
        self.last_seen = time.monotonic()

    @property
    def subscriptions(self) -> tuple[Any, ...]:
        return tuple(s for s in (self._sub, self._elected) if s is not None)

    def detach(self) -> None:
        self._sub = self._elected = None

    async def _on_elected(self, msg: Msg) -> None:
        """The consumer has a new leader, which knows none of our requests: ask it."""
        try:
            leader = str(json.loads(msg.data).get("leader", "?"))
        except (ValueError, AttributeError):
            leader = "?"
        self._log.info("%s: consumer %s elected a leader (%s); asking it for messages",
                       self._label, self.spec.durable, leader)
        self.last_seen = time.monotonic()
        self.credits = 0
        self._ask()

    def request(self, inflight: int) -> None:
        """Ask for more when at least half the room is free (or nothing is asked for)."""
        if self._sub is None:
            return
        room = self.spec.max_inflight
        free = room - inflight - self.credits
        if free <= 0 or (self.credits > 0 and free < max(1, room // 2)):
            return
        self.credits += free
        self._spawn(self._send(free))

    async def _send(self, batch: int) -> None:
        req = {
            "batch": batch,
            "expires": int(EXPIRES * 1e9),
            "idle_heartbeat": int(HEARTBEAT * 1e9),
        }
        try:
            await self._nc.publish(self._next_subject, json.dumps(req).encode(), reply=self._inbox)
        except Exception:  # noqa: BLE001 - disconnected; the watchdog asks again
            self.credits = max(0, self.credits - batch)

    async def _on_raw(self, msg: Msg) -> None:
        self.last_seen = time.monotonic()
        headers = msg.headers
        if headers and (status := headers.get("Status")):
            self._on_status(msg, status)
            return
        if msg.reply:
            self.credits = max(0, self.credits - 1)
            await self._on_message(msg)

    def _on_status(self, msg: Msg, status: str) -> None:
        headers = msg.headers or {}
        desc = next(
            (str(v) for k, v in headers.items() if str(k).lower().endswith("description")), ""
        )
        kind = PullStatus.of(status, desc)
        if kind is PullStatus.HEARTBEAT:
            return
        pending = headers.get("Nats-Pending-Messages")
        if pending is not None and pending.isdigit():
            self.credits = max(0, self.credits - int(pending))
        elif kind is not PullStatus.NO_MESSAGES:
            self.credits = 0
        if kind is PullStatus.CONSUMER_DELETED:
            self._log.warning(
                "%s: its consumer %s was deleted; recreating it", self._label, self.spec.durable
            )
            self._spawn(self.recreate())
            return
        if kind is PullStatus.OTHER:  # e.g. 409 Exceeded MaxWaiting: the watchdog asks again
            self._log.debug("%s: pull status %s %s", self._label, status, desc)
        elif kind is PullStatus.REQUEST_TIMEOUT:
            self._ask()  # an expired request: replace it now

    async def _ensure_quietly(self) -> None:
        try:
            await self.ensure_consumer()
        except Exception as exc:  # noqa: BLE001 - the watchdog retries
            self._log.warning(
                "%s: cannot recreate consumer %s: %s", self._label, self.spec.durable, exc
            )

    async def recreate(self) -> None:
        await self._ensure_quietly()
        self.credits = 0

    def check(self, now: float) -> bool:
        """Called by the watchdog; True when pulling had to be restarted: the requests are
        written off (the caller asks again at once) and the consumer is made sure of on the
        side."""
        if self.credits > 0 and now - self.last_seen > STALLED_AFTER:
            self._log.info(
                "%s: no word from JetStream for %.0fs; asking again",
                self._label,
                now - self.last_seen,
            )
            self.last_seen = now
            self.credits = 0
            self._spawn(self._ensure_quietly())
            return True
        return False


__all__ = ["EXPIRES", "HEARTBEAT", "LEADER_ELECTED", "STALLED_AFTER", "Puller"]
