"""A component's life on this node: state, counters, start/stop, and its snapshot."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nimsforest.forest.consumer import ConsumerRunner
from nimsforest.forest.delivery import ConsumerSpec, Handler, Stats
from nimsforest.forest.model import ComponentKind, ComponentRef, ComponentState, ComponentStatus
from nimsforest.forest.trace import NO_TRACING, Tracing

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from nimsforest.forest.dead import DeadLetters
    from nimsforest.forest.publisher import Publisher
    from nimsforest.forest.sources import FlowFn, SourceLoop


class Component:
    """Built (scripts compiled, brain configured) but not started until `start()`."""

    def __init__(
        self,
        kind: ComponentKind,
        name: str,
        spec: Any,
        *,
        consumer: ConsumerSpec | None = None,
        handler: Handler | None = None,
        stats: Stats | None = None,
        publishes: str | None = None,
        closers: tuple[Callable[[], Awaitable[None]], ...] = (),
        fingerprint: str | None = None,
        loop: SourceLoop | None = None,
    ) -> None:
        self.kind, self.name, self.spec = kind, name, spec
        self.consumer, self.handler = consumer, handler
        self.stats = stats or Stats()
        self.publishes = publishes
        self.fingerprint = fingerprint  # what it runs (spec + file text), for reload diffs
        self.state = ComponentState.STOPPED
        self._closers = closers
        self.loop = loop  # a source that runs (schedule, http_poll, nats)
        self._runner: ConsumerRunner | None = None
        self._last_failure: str | None = None
        self._log = logging.getLogger(f"nimsforest.forest.{kind.value}")

    @property
    def can_retry(self) -> bool:
        """FAILED at start although it was built: NATS was busy or away, not a bad spec."""
        return self.state is ComponentState.FAILED and (
            (self.consumer is not None and self.handler is not None) or self.loop is not None
        )

    @property
    def ref(self) -> ComponentRef:
        return ComponentRef(kind=self.kind, name=self.name)

    @property
    def label(self) -> str:
        return str(self.ref)

    async def start(self, nc: Client, js: JetStreamContext, publisher: Publisher,
                    dead: DeadLetters | None = None, *, node: str = "",
                    flow: FlowFn | None = None, tracing: Tracing = NO_TRACING) -> None:
        """Bind the shared durable consumer and start handling (what it gives up on goes to
        `dead`). On failure the component is FAILED (with the reason as its last error) and
        the error is raised."""
        try:
            if self.consumer is not None and self.handler is not None:
                await self.handler.attach(js)
                self._runner = ConsumerRunner(
                    nc,
                    js,
                    publisher,
                    self.consumer,
                    self.handler,
                    self.stats,
                    label=self.label,
                    kind=self.kind.value,
                    name=self.name,
                    dead=dead,
                    tracing=tracing,
                    node=node,
                )
                await self._runner.start()
            if self.loop is not None:
                assert flow is not None, "a source that runs needs the River's flow"
                await self.loop.start(nc, js, node, flow)
        except Exception as exc:
            if self._runner is not None:
                await self._runner.stop(0.5)
            self._runner = None
            # built, so NATS was busy or away (a consumer not found while a cluster forms):
            # the forest tries it again, which is not an error yet
            self.fail(f"cannot start: {exc or type(exc).__name__}", retried=True)
            raise
        self.state = ComponentState.RUNNING
        self._last_failure = None
        self.stats.started_at = datetime.now(UTC)
        where = (
            f" (consumer {self.consumer.durable} on {self.consumer.filter_subject})"
            if self.consumer
            else ""
        )
        self._log.info("%s running%s", self.label, where)

    def fail(self, reason: str, *, retried: bool = False) -> None:
        """FAILED with `reason`. `retried`: the forest tries it again (a start NATS was not
        ready for), logged once per reason as a warning; else an error someone must fix."""
        self.state = ComponentState.FAILED
        self.stats.error(reason)
        if not retried:
            self._log.error("%s failed: %s", self.label, reason)
        elif reason != self._last_failure:
            self._log.warning("%s %s; trying again every few seconds", self.label, reason)
        self._last_failure = reason

    async def stop(self, grace: float = 5.0) -> None:
        runner, self._runner = self._runner, None
        if self.loop is not None:
            await self.loop.stop()
        if runner is not None:
            await runner.stop(grace)
        for close in self._closers:
            try:
                await close()
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                self._log.debug("%s: closing: %s", self.label, exc)
        if self.state is not ComponentState.STOPPED:
            was_failed = self.state is ComponentState.FAILED
            self.state = ComponentState.STOPPED
            self._log.info("%s stopped%s", self.label, " (it had failed)" if was_failed else "")

    def status(self) -> ComponentStatus:
        s = self.stats
        return ComponentStatus(
            kind=self.kind,
            name=self.name,
            state=self.state,
            consumes=self.consumer.filter_subject if self.consumer else None,
            publishes=self.publishes,
            consumer=self.consumer.durable if self.consumer else None,
            events_in=s.events_in,
            events_out=s.events_out,
            dropped=s.dropped,
            errors=s.errors,
            dead=s.dead,
            last_error=s.last_error,
            last_error_at=s.last_error_at,
            last_ok_at=s.last_ok_at,
            started_at=s.started_at,
            prompt_tokens=s.prompt_tokens,
            completion_tokens=s.completion_tokens,
            cost=s.cost,
            activity=self.loop.activity if self.loop is not None else None,
        )


__all__ = ["Component"]
