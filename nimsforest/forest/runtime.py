"""The Forest runtime on one node: its components, the River entrance and the decomposer.

Every node runs the same forest. Components consume through durable consumers named
after them, so nodes share the work. `reload(config)` is the one way a running forest
changes (the control plane's watcher calls it with the desired state; tests and tools
with a config of their own): it changes this node only, is serialised, and validates
(reads and compiles everything) before it touches anything, so a bad spec changes
nothing.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nimsforest.forest import river
from nimsforest.forest.build import build_component, build_decomposer, spec_fingerprint
from nimsforest.forest.component import Component
from nimsforest.forest.config import ForestConfig, component_label
from nimsforest.forest.dead import DeadLetters
from nimsforest.forest.errors import (
    ComponentNotFound,
    FlowError,
    ForestConfigError,
)
from nimsforest.forest.model import (
    ComponentKind,
    ComponentRef,
    ComponentState,
    ComponentStatus,
    FlowReceipt,
    ForestStatus,
    ReloadDiff,
)
from nimsforest.forest.publisher import Publisher
from nimsforest.forest.replay import NothingToReplay, ReplayDone, ReplayRange, replay
from nimsforest.forest.soil import Soil
from nimsforest.forest.specs import USER_KINDS, ComponentSpec
from nimsforest.forest.trace import NO_TRACING, TraceContext, Tracing, hop_name
from nimsforest.streams import CORE_STREAMS, NIM_CACHE, NIM_RATE, ensure_stream, ensure_streams
from nimsforest.tasks import cancel_and_wait

if TYPE_CHECKING:
    from nats.aio.client import Client

log = logging.getLogger("nimsforest.forest")
_Key = tuple[ComponentKind, str]


class Forest:
    def __init__(
        self,
        nc: Client,
        config: ForestConfig,
        *,
        replicas: int = 1,
        placement_tags: tuple[str, ...] | None = None,
        env: Mapping[str, str] | None = None,
        stop_grace: float = 5.0,
        retry_interval: float = 5.0,
        river_hold: float = river.RIVER_HOLD,
        node: str = "",
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self.dead = DeadLetters(self._js, node)  # the DEAD stream: what components gave up on
        self._publisher = Publisher(nc)
        self._config = config
        self._replicas, self._placement = replicas, placement_tags
        self._env = env
        self._grace = stop_grace
        self._components: dict[_Key, Component] = {}
        self._invalid: dict[_Key, Component] = {}  # config.invalid, shown FAILED
        self._decomposer: Component | None = None
        self._lock = asyncio.Lock()
        self._running = False
        self._retry_interval = retry_interval
        self._river_hold = river_hold
        self._tracing = tracing
        self._retry_task: asyncio.Task[None] | None = None
        self.soil = Soil(self._js)

    # lifecycle ------------------------------------------------------------------------
    @property
    def config(self) -> ForestConfig:
        """The configuration in force, including runtime adds and removes."""
        return self._config

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        """Ensure RIVER, WIND, HUMUS, SOIL and DEAD, then start the decomposer and every component.
        A component that cannot be built or started is FAILED; the others run."""
        async with self._lock:
            if self._running:
                return
            await ensure_streams(
                self._js, CORE_STREAMS, self._replicas, self._placement, rescale=False
            )
            self._running = True
            await self._ensure_cache(self._config)
            if self._config.decomposer.enabled:
                self._decomposer = build_decomposer(self._config, self.soil)
                await self._start_quietly(self._decomposer)
            for kind in USER_KINDS:
                for name, spec in self._config.specs(kind).items():
                    comp = self._build_or_failed(kind, name, spec)
                    if comp.state is not ComponentState.FAILED:
                        await self._start_quietly(comp)
                    self._components[(kind, name)] = comp
            self._show_invalid(self._config)
            failed = sum(c.state is ComponentState.FAILED for c in self._all())
            log.info("forest running: %d components, %d failed", len(self._all()), failed)
            self._retry_task = asyncio.create_task(self._retry_loop(), name="forest-retry")

    async def stop(self) -> None:
        if self._retry_task is not None:  # its retries ask NATS: a cancel can be lost
            await cancel_and_wait([self._retry_task], owner="the forest's retry loop")
            self._retry_task = None
        async with self._lock:
            if not self._running:
                return
            self._running = False
            for kind in reversed(USER_KINDS):
                await asyncio.gather(
                    *(c.stop(self._grace) for (k, _), c in self._components.items() if k is kind)
                )
            if self._decomposer is not None:
                await self._decomposer.stop(self._grace)
            self._components.clear()
            self._invalid.clear()
            self._decomposer = None
            await self._publisher.close()
            self._publisher = Publisher(self._nc)
            log.info("forest stopped")

    # the one way to change a running forest ---------------------------------------
    async def reload(self, new_config: ForestConfig, *, fail_alone: bool = False) -> ReloadDiff:
        """Bring the forest to `new_config`. Everything added or changed (a changed spec, or
        a changed script or prompt file) is built first; any error raises and changes
        nothing. Then removed components stop, changed ones restart alone, added ones start.
        FAILED components are retried as changed.

        With `fail_alone` (the control plane's watcher applying the desired state), a
        component that cannot be built does not stop the rest: it is FAILED with its
        sentence (in `list()`, /health and the log) and listed in the diff's `failed`."""
        async with self._lock:
            added: builtins.list[ComponentRef] = []
            removed: builtins.list[ComponentRef] = []
            changed: builtins.list[ComponentRef] = []
            unchanged: builtins.list[ComponentRef] = []
            builds: dict[_Key, Component] = {}
            for kind in USER_KINDS:
                old_specs, new_specs = self._config.specs(kind), new_config.specs(kind)
                for name in old_specs.keys() - new_specs.keys():
                    removed.append(ComponentRef(kind=kind, name=name))
                for name, spec in new_specs.items():
                    ref = ComponentRef(kind=kind, name=name)
                    current = self._components.get((kind, name))
                    was = (
                        current.fingerprint
                        if current
                        else (
                            spec_fingerprint(self._config, kind, name, old_specs[name], self._env)
                            if name in old_specs
                            else None
                        )
                    )
                    if (
                        name in old_specs
                        and was == spec_fingerprint(new_config, kind, name, spec, self._env)
                        and (
                            current is None
                            or current.state is not ComponentState.FAILED
                            # the same spec and files cannot build better this time
                            or (fail_alone and current.handler is None and current.consumer is None
                                and current.fingerprint is not None)
                        )
                    ):
                        unchanged.append(ref)
                        continue
                    if fail_alone:
                        builds[(kind, name)] = self._build_or_failed(kind, name, spec, new_config)
                    else:
                        builds[(kind, name)] = build_component(
                            new_config, kind, name, spec, self._env
                        )
                    (changed if name in old_specs else added).append(ref)
            decomposer_changed = new_config.decomposer != self._config.decomposer
            failed: builtins.list[ComponentRef] = []
            if self._running:
                await self._ensure_cache(new_config)
                for ref in removed:
                    comp = self._components.pop((ref.kind, ref.name), None)
                    if comp is not None:
                        await comp.stop(self._grace)
                for ref in changed:
                    old = self._components.pop((ref.kind, ref.name), None)
                    if old is not None:
                        await old.stop(self._grace)
                self._config = new_config
                if decomposer_changed:
                    await self._restart_decomposer()
                for ref in [*changed, *added]:
                    comp = builds[(ref.kind, ref.name)]
                    if comp.state is ComponentState.FAILED or not await self._start_quietly(comp):
                        failed.append(ref)
                    self._components[(ref.kind, ref.name)] = comp
                self._show_invalid(new_config)
            else:
                self._config = new_config
            diff = ReloadDiff(
                added=tuple(added),
                removed=tuple(removed),
                changed=tuple(changed),
                unchanged=tuple(unchanged),
                failed=tuple(failed),
            )
            log.info("forest reloaded: %s", diff.summary())
            return diff

    # views ------------------------------------------------------------------------------
    def list(self, kind: ComponentKind | str | None = None) -> tuple[ComponentStatus, ...]:
        want = ComponentKind(kind) if kind is not None else None
        out = [c.status() for c in self._all() if want is None or c.kind is want]
        if not self._running:  # configured but not running: show them as stopped
            for k in USER_KINDS:
                if want is None or want is k:
                    out += [
                        ComponentStatus(
                            kind=k, name=n, state=ComponentState.STOPPED, publishes=s.publishes
                        )
                        for n, s in self._config.specs(k).items()
                    ]
        order = {k: i for i, k in enumerate((ComponentKind.DECOMPOSER, *USER_KINDS))}
        return tuple(sorted(out, key=lambda s: (order[s.kind], s.name)))

    def get(self, kind: ComponentKind | str, name: str) -> ComponentStatus:
        for s in self.list(kind):
            if s.name == name:
                return s
        raise ComponentNotFound(f"There is no {component_label(ComponentKind(kind), name)}.")

    def status(self) -> ForestStatus:
        path = str(self._config.path) if self._config.path else None
        return ForestStatus(running=self._running, config_path=path, components=self.list(),
                            tracing=self._tracing.status())

    # the River ------------------------------------------------------------------------------
    async def flow(
        self, subject: str, payload: Any, *, source: str = "api", msg_id: str | None = None,
        trace: TraceContext | None = None,
    ) -> FlowReceipt:
        """Store one input in the River. `payload` is JSON bytes or a JSON-able value;
        `trace` is the sender's trace context (a request's `traceparent`), else the input
        starts a trace. Returns once JetStream has stored it; raises FlowError otherwise."""
        hop = self._tracing.hop(f"river {subject}", trace, {"nimsforest.source": source,
                                                            "nimsforest.node": self.dead.node})
        try:
            receipt = await river.flow(self._nc, self._js, subject, payload, source=source,
                                       msg_id=msg_id, hold=self._river_hold,
                                       headers=hop.headers(hop_name(source, self.dead.node)))
        except FlowError as exc:
            hop.end(str(exc))
            raise
        hop.end()
        return receipt

    async def receive_webhook(
        self, path: str, headers: Mapping[str, str], body: bytes
    ) -> FlowReceipt:
        """Verify and store one webhook delivery for the source mounted at `path`."""
        comp = next((c for c in self._sources() if c.spec.path and c.spec.path == path.rstrip("/")),
                    None)
        if comp is None:
            raise FlowError(f"No webhook source is mounted at {path}.", 404)
        if comp.state is not ComponentState.RUNNING:
            raise FlowError(f"Source '{comp.name}' is not running.", 503)
        return await river.receive(comp, headers, body, self.flow)

    async def replay(self, kind: ComponentKind | str, name: str, rng: ReplayRange) -> ReplayDone:
        """Re-feed one component from its input stream (replay.py); NothingToReplay when it
        has no input (a source) or the range is wrong."""
        comp = self._components.get((ComponentKind(kind), name))
        if comp is None:
            raise ComponentNotFound(f"There is no {component_label(ComponentKind(kind), name)}.")
        if comp.consumer is None:
            raise NothingToReplay(f"{comp.label} has no input stream to replay.")
        return await replay(self._js, comp.ref, comp.consumer, rng)

    # internals ------------------------------------------------------------------------------
    def _all(self) -> Sequence[Component]:
        return ([self._decomposer] if self._decomposer else []) + list(
            self._components.values()) + [
            c for k, c in self._invalid.items() if k not in self._components]

    def _show_invalid(self, config: ForestConfig) -> None:
        """The components `config` left out as invalid, FAILED with their sentences (a
        valid component of the same name wins)."""
        wanted = {(p.ref.kind, p.ref.name): p for p in config.invalid
                  if p.ref.name not in config.specs(p.ref.kind)}
        for key in list(self._invalid):
            if key not in wanted or wanted[key].sentence != self._invalid[key].stats.last_error:
                del self._invalid[key]
        for key, problem in wanted.items():
            if key not in self._invalid:
                comp = Component(problem.ref.kind, problem.ref.name, None)
                comp.fail(problem.sentence)
                self._invalid[key] = comp

    def _sources(self) -> Sequence[Component]:
        return [c for (k, _), c in self._components.items() if k is ComponentKind.SOURCE]

    def _build_or_failed(self, kind: ComponentKind, name: str, spec: ComponentSpec,
                         config: ForestConfig | None = None) -> Component:
        try:
            return build_component(config or self._config, kind, name, spec, self._env)
        except ForestConfigError as exc:
            cfg = config or self._config
            comp = Component(kind, name, spec, publishes=spec.publishes,
                             fingerprint=spec_fingerprint(cfg, kind, name, spec, self._env))
            comp.fail(str(exc))
            return comp

    async def retry_failed(self) -> None:
        """Start again every component that was built but could not start (a consumer not
        created while JetStream was busy or away). A component with a bad spec stays FAILED
        until it is changed."""
        async with self._lock:
            if not self._running:
                return
            for comp in self._all():
                if comp.can_retry:
                    await self._start_quietly(comp)

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(self._retry_interval)
            try:
                await self.retry_failed()
            except Exception as exc:  # noqa: BLE001 - the loop lives on; components log
                log.warning("could not retry the failed components: %s", exc)

    async def _start_quietly(self, comp: Component) -> bool:
        try:
            await comp.start(self._nc, self._js, self._publisher, self.dead,
                             node=self.dead.node, flow=self.flow, tracing=self._tracing)
            return True
        except Exception:  # noqa: BLE001 - the component is FAILED with the reason
            return False

    async def _ensure_cache(self, config: ForestConfig) -> None:
        """The buckets of the nims' answer cache and rate limits, when a nim of `config`
        uses them (one that cannot be created is logged: a nim then runs without its cache,
        and one with a rate limit fails to start until it can)."""
        nims = config.specs(ComponentKind.NIM).values()
        wanted = []
        if any(getattr(s, "cache", None) for s in nims):
            wanted.append(NIM_CACHE)
        if any(getattr(b, "rate_limit", None) for s in nims for b in getattr(s, "chain", ())):
            wanted.append(NIM_RATE)
        for spec in wanted:
            try:
                await ensure_stream(self._js, spec, self._replicas, self._placement,
                                    rescale=False)
            except Exception as exc:  # noqa: BLE001 - see above
                log.warning("the bucket %s cannot be created: %s", spec.kv_bucket, exc)

    async def _restart_decomposer(self) -> None:
        if self._decomposer is not None:
            await self._decomposer.stop(self._grace)
            self._decomposer = None
        if self._config.decomposer.enabled:
            self._decomposer = build_decomposer(self._config, self.soil)
            await self._start_quietly(self._decomposer)


__all__ = ["Forest"]
