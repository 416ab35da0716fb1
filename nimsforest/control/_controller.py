"""The Controller: every change to the running forest goes through here, whichever way it
came in (HTTP, NATS, SIGHUP, start-up).

Contract of each change (`add`, `replace`, `remove`, `reload_file`):
- it is validated and compiled on this node before anything is written (a bad name,
  spec, Lua script, template or brain raises Invalid and writes nothing);
- it is written to the FOREST bucket with compare-and-set (a lost race is Conflict);
- it then waits, at most `apply_timeout`, for this node's watcher to apply it, and says
  how the component runs here (every other node applies it through its own watcher);
- it leaves one audit record, accepted or refused.
Changes made on one node are serialised; across nodes, the revisions decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nimsforest.control._audit import Action, Actor, AuditLog, AuditRecord, Refusal, Via
from nimsforest.control._cluster_view import cluster_view, error_state, node_view, with_lag
from nimsforest.control._desired import (
    DesiredComponent,
    Origin,
    desired_config,
    entry_key,
    file_entries,
    make_entry,
    plan_file_reload,
    without_components,
)
from nimsforest.control._ratelimit import ChangeLimiter
from nimsforest.control._reports import INTERVAL, ReportBoard
from nimsforest.control._schemas import (
    ChangeOut,
    ComponentDetail,
    ComponentOut,
    ComponentView,
    ControlOut,
    ErrorState,
    ReloadOut,
    StatusOut,
    parse_kind,
    parse_request,
    to_spec,
)
from nimsforest.control._store import DesiredStore, Stored
from nimsforest.control._watcher import DesiredWatcher
from nimsforest.control.errors import (
    Conflict,
    ControlError,
    Invalid,
    NotFound,
    TooLarge,
    Unavailable,
)
from nimsforest.forest import (
    NAME_RE,
    SPEC_TYPES,
    ComponentKind,
    ComponentRef,
    ComponentSpec,
    ComponentState,
    ComponentStatus,
    ForestConfig,
    ForestConfigError,
    ProblemKind,
    build_component,
    check_name,
    component_label,
    read_forest_config,
)
from nimsforest.streams import NODE_TAG, with_backoff
from nimsforest.tasks import cancel_and_wait

if TYPE_CHECKING:
    from nats.aio.client import Client

    from nimsforest.forest import Forest

log = logging.getLogger("nimsforest.control")
SIGNAL_RELOAD_FOR = 120.0  # seconds a SIGHUP reload keeps trying while NATS is out of reach
MAX_ENTRY = 900 * 1024  # NATS refuses messages over 1 MB by default


class ControllerCore:
    """Runtime changes to the forest, cluster-wide and durable. See docs/CONTROL.md.

    The core decides and writes; its ways in (HTTP routers, NATS request/reply) are added
    by `Controller` (control/_plane.py), which is what the package's face exports."""

    def __init__(
        self,
        nc: Client,
        forest: Forest,
        *,
        node: str,
        config_file: Path | None = None,
        file_config: ForestConfig | None = None,
        replicas: int = 1,
        placement_tags: tuple[str, ...] | None = (NODE_TAG,),
        token: str | None = None,
        rate: str = "60/minute",
        apply_timeout: float = 10.0,
        check_interval: float = 5.0,
        zone: str | None = None,
        report_interval: float = INTERVAL,
        lag: Callable[[], Mapping[str, tuple[int, float]]] | None = None,
    ) -> None:
        """`lag()`: the node's last reading of its consumers' lag (durable name ->
        num_pending + num_ack_pending and the time.time() it was read), from the NATS
        observer."""
        self.node = node
        self._lag = lag
        self.forest = forest
        self.token = token
        self.config_file = config_file
        self._nc = nc
        self._base = without_components(file_config or ForestConfig.empty())
        self.store = DesiredStore(nc, replicas=replicas, placement_tags=placement_tags)
        self.audit_log = AuditLog(nc, replicas=replicas, placement_tags=placement_tags)
        self.limiter = ChangeLimiter(rate)
        self.watcher = DesiredWatcher(
            self.store, forest, lambda: self._base, check_interval=check_interval
        )
        self.board = ReportBoard(nc, node, self.status, zone=zone, interval=report_interval,
                                 replicas=replicas, placement_tags=placement_tags)
        self._apply_timeout = apply_timeout
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._drift: asyncio.Task[None] | None = None
        self._refusals: dict[tuple[str, Action, Refusal], float] = {}

    # --- lifecycle -------------------------------------------------------------------------
    async def start(
        self, *, first_apply_timeout: float = 30.0, attempts: int = 6, backoff: float = 1.0
    ) -> None:
        """Open the bucket and the audit stream, seed the bucket from the configuration
        file when it was never written, apply the desired state. Opening and seeding are
        retried with backoff (JetStream may still be settling a cluster change), then a
        RuntimeError says why."""

        async def open_and_seed() -> None:
            await self.store.open()
            await self.audit_log.open()
            await self._seed()

        await with_backoff(
            open_and_seed,
            attempts=attempts,
            delay=backoff,
            waiting="Forest control not ready",
            failed="The forest control plane cannot open its bucket",
            logger=log,
        )
        self._task = asyncio.create_task(self.watcher.run(), name="forest-control-watch")
        if not await self.watcher.wait_first_apply(first_apply_timeout):
            log.warning("The desired forest state is not applied yet; the node goes on")

    async def stop(self) -> None:
        # the watcher asks NATS: a cancel can be lost (nimsforest.tasks), so bounded
        await cancel_and_wait([t for t in (self._drift, self._task) if t is not None],
                              owner="forest control")
        self._task = self._drift = None

    def resync(self) -> None:
        self.watcher.resync()

    async def _seed(self) -> None:
        if self.config_file is None:
            return
        try:
            if await self.store.last_revision() > 0:
                self._note_file_drift()
                return
            entries = file_entries(read_forest_config(self.config_file, tolerant=True),
                                   by="startup", node=self.node, keep_unreadable=True)
        except (OSError, ForestConfigError) as exc:
            log.error("Cannot seed the desired forest state from %s: %s", self.config_file, exc)
            return
        written = 0
        for e in entries.values():
            with contextlib.suppress(Conflict):  # another node seeded it first
                await self.store.create(e)
                written += 1
        log.info("Seeded the desired forest state with %d components from %s",
                 written, self.config_file)
        await self.audit_log.record(AuditRecord(
            node=self.node, who=Actor(via=Via.STARTUP), action=Action.SEED, ok=True, result="ok",
            detail=f"{written} components from {self.config_file}",
        ))

    def _note_file_drift(self) -> None:
        """At start the bucket wins; say so when the file says otherwise."""
        async def check() -> None:
            assert self.config_file is not None
            with contextlib.suppress(Exception):
                wanted = file_entries(read_forest_config(self.config_file, tolerant=True),
                                      by="", node=self.node, keep_unreadable=True)
                snap = await self.store.snapshot()
                plan = plan_file_reload(wanted, {k: s.entry for k, s in snap.entries.items()})
                n = len(plan.add) + len(plan.change) + len(plan.remove) + len(plan.conflicts)
                if n:
                    log.warning(
                        "%s differs from the cluster's desired state in %d component(s); the "
                        "cluster's state runs. Reload (SIGHUP or `nimsforest reload`) to apply "
                        "the file.", self.config_file, n,
                    )
        self._drift = asyncio.create_task(check(), name="forest-file-drift")

    # --- changes ---------------------------------------------------------------------------
    async def add(self, kind: str | ComponentKind, body: Any, who: Actor) -> ChangeOut:
        k = self._kind(kind)
        return await self._audited(Action.ADD, k, _name_of(body), who, self._add(k, body, who))

    async def replace(
        self, kind: str | ComponentKind, name: str, body: Any, who: Actor
    ) -> ChangeOut:
        k = self._kind(kind)
        return await self._audited(
            Action.REPLACE, k, name, who, self._replace(k, name, body, who)
        )

    async def remove(self, kind: str | ComponentKind, name: str, who: Actor) -> ChangeOut:
        k = self._kind(kind)
        return await self._audited(Action.REMOVE, k, name, who, self._remove(k, name))

    async def reload_file(self, who: Actor) -> ReloadOut:
        try:
            out = await self._reload_file(who)
        except ControlError as exc:
            await self._record(Action.RELOAD, None, None, who, None, exc.message)
            raise
        await self._record(Action.RELOAD, None, None, who, None, None, detail=out.message)
        return out

    async def reload_from_signal(self) -> ReloadOut | None:
        """SIGHUP: reload the configuration file; refusals are logged, never raised. A
        signal has nobody to answer who could try again, so a reload that found the
        desired-state bucket out of reach (NATS restarting, frozen or overloaded) is tried
        again, after 1 s and then up to 10 s, for SIGNAL_RELOAD_FOR seconds."""
        deadline = time.monotonic() + SIGNAL_RELOAD_FOR
        delay = 1.0
        while True:
            try:
                out = await self.reload_file(Actor(via=Via.SIGNAL))
            except Unavailable as exc:
                if time.monotonic() + delay > deadline:
                    log.error("Forest reload given up after %.0f s, nothing changed: %s",
                              SIGNAL_RELOAD_FOR, exc.message)
                    return None
                log.warning("Forest reload tries again in %.0f s: %s", delay, exc.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            except ControlError as exc:
                log.error("Forest reload refused, nothing changed: %s", exc.message)
                return None
            log.info("Forest reload: %s", out.message)
            return out

    def check_rate(self, client: str) -> None:
        self.limiter.check(client)

    async def refused(self, action: Action, who: Actor, why: Refusal, message: str) -> None:
        """Record a change refused before it reached the controller (401, 429, a body
        that does not fit). At most one such record per client, action and reason every
        10 s, so a flood cannot push the real records out of the audit stream."""
        key = (str(who), action, why)
        now = time.monotonic()
        if now - self._refusals.get(key, -1e9) < 10.0:
            return
        if len(self._refusals) > 10_000:
            self._refusals.clear()
        self._refusals[key] = now
        await self._record(action, None, None, who, None, message, refusal=why)

    # --- views -----------------------------------------------------------------------------
    def status(self) -> StatusOut:
        st = self.forest.status()
        w = self.watcher.status()
        comps = self.list()
        return StatusOut(
            node=self.node,
            running=st.running,
            healthy=st.running
            and all(c.state is ComponentView.RUNNING for c in comps)
            and not w.problems,
            config_file=str(self.config_file) if self.config_file else None,
            control=ControlOut(
                state=w.state, sentence=w.sentence, revision=w.revision, cycles=w.cycles,
                problems={entry_key(r.kind, r.name): p.sentence for r, p in w.problems.items()},
            ),
            components=comps,
        )

    def cluster_status(self, node: str | None = None) -> StatusOut:
        """The forest as every node reports it (control/_cluster_view.py), or node `node`'s
        own report (NotFound when no node of that name reports)."""
        return self._merged(node, None)

    def cluster_list(self, kind: str | ComponentKind | None = None,
                     node: str | None = None) -> list[ComponentOut]:
        """`cluster_status(node)`'s components, all or of one kind."""
        return self._merged(node, self._kind(kind) if kind is not None else None).components

    def _merged(self, node: str | None, kind: ComponentKind | None) -> StatusOut:
        b = self.board
        me, heard, now = b.report(), b.heard(), time.time()
        if node is None:
            return cluster_view(me, heard, now, stale_after=b.stale_after,
                                forget_after=b.forget_after, kind=kind)
        return node_view(me, heard, now, node, stale_after=b.stale_after,
                         forget_after=b.forget_after, kind=kind)

    def list(self, kind: str | ComponentKind | None = None) -> list[ComponentOut]:
        """This node's view of the components (the cluster's: `cluster_list`)."""
        k = self._kind(kind) if kind is not None else None
        local = {
            entry_key(s.kind, s.name): s
            for s in self.forest.list()
            if s.kind is not ComponentKind.DECOMPOSER and (k is None or s.kind is k)
        }
        out: list[ComponentOut] = []
        for key, stored in sorted(self.watcher.entries.items()):
            if k is None or stored.entry.kind is k:
                out.append(self._view(stored, local.pop(key, None)))
        out += [_local_view(s, self.node) for s in local.values()]
        order = {kind: i for i, kind in enumerate(ComponentKind)}
        out.sort(key=lambda c: (order[c.kind], c.name))
        if self._lag is None:
            return out
        return with_lag(out, self._lag())

    def cluster_get(self, kind: str | ComponentKind, name: str,
                    node: str | None = None) -> ComponentDetail:
        """One component as every node runs it (the cluster view's entry, with its settings
        from the desired state), or as node `node` runs it (its own report); NotFound when
        neither the desired state nor a reporting node has it."""
        k = self._kind(kind)
        merged = next((c for c in self.cluster_list(k, node) if c.name == name), None)
        if merged is None:
            where = f" on node {node}" if node else ""
            raise NotFound(f"There is no {component_label(k, name)}{where}.")
        stored = self.watcher.entries.get(entry_key(k, name))
        spec = _redacted(stored.entry.spec) if stored else {}
        return ComponentDetail(**merged.model_dump(), spec=spec)

    def get(self, kind: str | ComponentKind, name: str) -> ComponentDetail:
        k = self._kind(kind)
        stored = self.watcher.entries.get(entry_key(k, name))
        local = next((s for s in self.forest.list(k) if s.name == name), None)
        if stored is None and local is None:
            raise NotFound(f"There is no {component_label(k, name)}.")
        view = self._view(stored, local) if stored else _local_view(local, self.node)  # type: ignore[arg-type]
        spec = _redacted(stored.entry.spec) if stored else {}
        return ComponentDetail(**view.model_dump(), spec=spec)

    async def audit(self, limit: int = 20) -> Sequence[AuditRecord]:
        try:
            return await self.audit_log.recent(limit)
        except Exception as exc:  # noqa: BLE001 - JetStream unavailable
            raise Unavailable(f"The audit log cannot be read: {exc}.") from None

    # --- internals -------------------------------------------------------------------------
    def _kind(self, kind: str | ComponentKind) -> ComponentKind:
        if isinstance(kind, ComponentKind) and kind is not ComponentKind.DECOMPOSER:
            return kind
        return parse_kind(str(kind))

    async def _audited(
        self, action: Action, kind: ComponentKind, name: str | None, who: Actor, work: Any
    ) -> ChangeOut:
        try:
            out: ChangeOut = await work
        except ControlError as exc:
            await self._record(action, kind, name, who, None, exc.message)
            raise
        digest = out.component.digest if out.component else None
        await self._record(action, kind, name, who, digest, None)
        return out

    async def _record(
        self,
        action: Action,
        kind: ComponentKind | None,
        name: str | None,
        who: Actor,
        digest: str | None,
        error: str | None,
        detail: str | None = None,
        refusal: Refusal | None = None,
    ) -> None:
        await self.audit_log.record(AuditRecord(
            node=self.node, who=who, action=action, kind=kind.value if kind else None,
            name=name, digest=digest, ok=error is None, result=error or "ok", detail=detail,
            refusal=refusal,
        ))

    def _compile(self, kind: ComponentKind, body: Any, origin: Origin, who: Actor,
                 name: str | None = None) -> DesiredComponent:
        req = parse_request(kind, body)
        if name is not None and req.name != name:
            raise Invalid(f"The body names '{req.name}' but the path names '{name}'.")
        # the API names the file fields (`script`, `prompt`) where the spec has the content
        api_field = {v: k for k, v in SPEC_TYPES[kind].file_fields.items()}
        try:
            req_name, spec, files = to_spec(kind, req)
            check_name(kind, req_name)
            # compile the Lua, the template and the brain; nothing is kept
            build_component(self._base.model_copy(update={"path": None}), kind, req_name, spec)
        except ForestConfigError as exc:
            field = api_field.get(exc.field or "", exc.field)
            raise Invalid(str(ForestConfigError(exc.reason, component=exc.component,
                                                field=field))) from None
        entry = make_entry(kind, req_name, spec, origin=origin, by=str(who), node=self.node,
                           files=files)
        if len(entry.encode()) > MAX_ENTRY:
            raise TooLarge(f"{entry.label} is larger than {MAX_ENTRY // 1024} KiB.")
        return entry

    def _check_clashes(self, entry: DesiredComponent) -> None:
        """Conflict when `entry` clashes with another desired component (a webhook path
        taken), whichever of the two the check names."""
        others = [s.entry for k, s in self.watcher.entries.items() if k != entry.key]
        _, problems = desired_config(self._base, [*others, entry])
        for p in problems.values():
            if p.kind is ProblemKind.PATH_TAKEN and entry.ref in (p.ref, p.holder):
                other = p.holder if p.ref == entry.ref else p.ref
                raise Conflict(f"{entry.label}: {p.field} is already used by {other}.")

    async def _add(self, kind: ComponentKind, body: Any, who: Actor) -> ChangeOut:
        entry = self._compile(kind, body, Origin.API, who)
        async with self._lock:
            if entry.key in self.watcher.entries:
                raise Conflict(f"{entry.label} already exists.")
            self._check_clashes(entry)
            revision = await self._nats_call(self.store.create(entry))
        return await self._answer(Action.ADD, entry.ref, revision, "Added")

    async def _replace(self, kind: ComponentKind, name: str, body: Any, who: Actor) -> ChangeOut:
        _existing_name(kind, name)
        async with self._lock:
            stored = await self._nats_call(self.store.get(kind, name))
            if stored is None:
                raise NotFound(f"There is no {component_label(kind, name)}.")
            entry = self._compile(kind, body, stored.entry.origin, who, name=name)
            self._check_clashes(entry)
            revision = await self._nats_call(self.store.update(entry, stored.revision))
        note = (" It comes from the configuration file: the next reload puts the file's "
                "version back." if stored.entry.origin is Origin.FILE else "")
        return await self._answer(Action.REPLACE, entry.ref, revision, "Replaced", note)

    async def _remove(self, kind: ComponentKind, name: str) -> ChangeOut:
        _existing_name(kind, name)
        async with self._lock:
            stored = await self._nats_call(self.store.get(kind, name))
            if stored is None:
                raise NotFound(f"There is no {component_label(kind, name)}.")
            revision = await self._nats_call(self.store.delete(stored))
        note = (" It comes from the configuration file: the next reload adds it again unless "
                "it is removed from the file." if stored.entry.origin is Origin.FILE else "")
        return await self._answer(Action.REMOVE, stored.entry.ref, revision, "Removed", note)

    async def _answer(
        self, action: Action, ref: ComponentRef, revision: int, verb: str, note: str = ""
    ) -> ChangeOut:
        """The change's answer: `component` is the cluster view's (as `list` shows it: every
        node that reports it, the worst state), the message says how this node and the
        others stand."""
        applied = await self.watcher.wait_applied(revision, self._apply_timeout)
        here: ComponentOut | None = None
        comp: ComponentOut | None = None
        with contextlib.suppress(NotFound):
            comp = ComponentOut(**self.cluster_get(ref.kind, ref.name).model_dump(
                exclude={"spec"}))
        if action is not Action.REMOVE:
            with contextlib.suppress(NotFound):
                here = ComponentOut(**self.get(ref.kind, ref.name).model_dump(exclude={"spec"}))
        if not applied:
            msg = f"{verb} {ref}; node {self.node} has not applied it yet."
        elif here is not None and here.state in (ComponentView.FAILED, ComponentView.NOT_APPLIED):
            msg = f"{verb} {ref}, but it does not run on node {self.node}: {here.last_error}"
        elif action is Action.REMOVE:
            msg = f"{verb} {ref}."
        else:
            msg = f"{verb} {ref} (running on node {self.node})."
        return ChangeOut(
            action=action, kind=ref.kind, name=ref.name, revision=revision, applied=applied,
            message=msg + self._elsewhere(action, comp) + note,
            component=comp,  # after a removal: where it is still reported, or None
        )

    def _elsewhere(self, action: Action, comp: ComponentOut | None) -> str:
        """What the other reporting nodes say of the component so far (their reports
        follow within an interval of applying the change)."""
        others = [n.node for n in self.cluster_status().nodes
                  if n.reporting and n.node != self.node]
        if not others:
            return ""
        rows = {r.node: r for r in (comp.nodes if comp else []) if r.node != self.node}
        if action is Action.REMOVE:
            still = [n for n in others if n in rows]
            return (f" Node(s) {', '.join(still)} still report it until they apply the change."
                    if still else "")
        running = [n for n in others if n in rows and rows[n].state is ComponentView.RUNNING]
        return (f" {len(running)} of the {len(others)} other reporting node(s) run it so far"
                + (f" ({', '.join(running)})" if running else "") + ".")

    async def _reload_file(self, who: Actor) -> ReloadOut:
        if self.config_file is None:
            raise ControlError(
                "This node has no forest configuration file (--forest-config or FOREST_CONFIG), "
                "so there is nothing to reload."
            )
        path = self.config_file
        try:  # as at start: a bad component is FAILED alone, a bad file is refused whole
            config = read_forest_config(path, tolerant=True)
            wanted = file_entries(config, by=str(who), node=self.node, keep_unreadable=True)
        except ForestConfigError as exc:
            raise Invalid(str(exc)) from None
        except OSError as exc:
            raise Invalid(f"{path} cannot be read: {exc.strerror or exc}.") from None
        async with self._lock:
            snap = await self._nats_call(self.store.snapshot())
            current = {k: s.entry for k, s in snap.entries.items()}
            plan = plan_file_reload(wanted, current)
            if plan.conflicts:
                raise Conflict(
                    f"{path} defines {', '.join(plan.conflicts)}, added through the API with other "
                    "settings; remove it through the API or rename it in the file. Nothing "
                    "was changed."
                )
            final = [e for k, e in current.items() if e.origin is Origin.API and k not in wanted]
            _, problems = desired_config(self._base, [*final, *wanted.values()])
            clashes = [p for p in problems.values() if p.kind is ProblemKind.PATH_TAKEN]
            if clashes:
                raise Conflict(clashes[0].sentence.rstrip(".") + ". Nothing was changed.")
            revision = await self._write_plan(plan, snap.entries, snap.revision)
            decomposer_changed = config.decomposer != self._base.decomposer
            self._base = without_components(config)
            if decomposer_changed:
                self.watcher.resync()
        applied = plan.empty or await self.watcher.wait_applied(revision, self._apply_timeout)
        names = {
            "added": [e.label for e in plan.add],
            "changed": [e.label for e in plan.change],
            "removed": [e.label for e in plan.remove],
            "adopted": [e.label for e in plan.adopted],
        }
        failed = self._failed_here(config, wanted)
        summary = ", ".join(f"{k} {len(v)}" for k, v in names.items() if v) or "no change"
        if failed:
            summary += f", FAILED {len(failed)}"
        why = "".join(f" FAILED on node {self.node}: {s}" for s in failed.values())
        return ReloadOut(
            file=str(path), **names, unchanged=len(plan.unchanged), revision=revision,
            applied=applied, failed=failed,
            message=f"Reloaded {path}: {summary}"
            + ("" if applied else f"; node {self.node} has not applied it yet") + "." + why,
        )

    def _failed_here(
        self, config: ForestConfig, wanted: dict[str, DesiredComponent]
    ) -> dict[str, str]:
        """The file's components that do not run on this node, by label, with their
        sentences: invalid settings (left out of the desired state), and those the
        watcher left out or the forest could not build or start."""
        out = {component_label(p.ref.kind, p.ref.name): p.sentence for p in config.invalid}
        refs = {e.ref for e in wanted.values()}
        for s in self.forest.list():
            ref = ComponentRef(kind=s.kind, name=s.name)
            if ref in refs and s.state is ComponentState.FAILED:
                out[component_label(s.kind, s.name)] = s.last_error or "FAILED"
        for ref in refs:
            problem = self.watcher.problem(ref)
            if problem is not None:
                out[component_label(ref.kind, ref.name)] = problem.sentence
        return out

    async def _write_plan(self, plan: Any, stored: dict[str, Stored], revision: int) -> int:
        """Write a reload plan key by key; a lost race undoes what was written."""
        done: list[tuple[str, Stored | None, int]] = []
        try:
            for e in plan.add:
                done.append((e.key, None, await self._nats_call(self.store.create(e))))
            for e in (*plan.change, *plan.adopted):
                prev = stored[e.key]
                written = await self._nats_call(self.store.update(e, prev.revision))
                done.append((e.key, prev, written))
            for e in plan.remove:
                prev = stored[e.key]
                done.append((e.key, prev, await self._nats_call(self.store.delete(prev))))
        except ControlError as exc:
            for key, before, after in reversed(done):
                await self.store.put_back(key, before, after)
            if isinstance(exc, Unavailable):  # NATS out of reach, not a lost race
                raise
            raise Conflict(
                "The desired state was changed by someone else during the reload; nothing was "
                "changed, retry."
            ) from None
        return max([revision, *(w for _, _, w in done)])

    async def _nats_call(self, coro: Any) -> Any:
        try:
            return await coro
        except ControlError:
            raise
        except Exception as exc:  # noqa: BLE001 - NATS/JetStream trouble, one sentence
            from natsembed.errors import reason

            raise Unavailable(
                f"The desired-state bucket cannot be reached: {reason(exc)}."
            ) from None

    def _view(self, stored: Stored, local: ComponentStatus | None) -> ComponentOut:
        e = stored.entry
        problem = self.watcher.problem(e.ref)
        base: dict[str, Any] = dict(
            kind=e.kind, name=e.name, origin=e.origin, files=e.files, digest=e.digest,
            revision=stored.revision, by=e.by, node=e.node, at=e.at,
        )
        if local is not None:
            base.update(_stats(local, self.node))
        elif problem is not None:
            base.update(state=ComponentView.NOT_APPLIED, last_error=problem.sentence,
                        last_error_node=self.node, error_state=ErrorState.CURRENT)
        else:
            base.update(state=ComponentView.PENDING)
        return ComponentOut(**base)


def _existing_name(kind: ComponentKind, name: str) -> None:
    """A name no component can have names none (and is no valid KV key)."""
    if not NAME_RE.fullmatch(name):
        raise NotFound(f"There is no {component_label(kind, name)}.")


def _stats(s: ComponentStatus, node: str) -> dict[str, Any]:
    state = ComponentView(s.state.value)
    return dict(
        state=state, consumes=s.consumes, publishes=s.publishes, consumer=s.consumer,
        events_in=s.events_in, events_out=s.events_out, dropped=s.dropped, errors=s.errors,
        dead=s.dead, last_error=s.last_error, last_error_at=s.last_error_at,
        last_error_node=node if s.last_error else None, last_ok_at=s.last_ok_at,
        error_state=error_state(state, s.last_error, s.last_error_at, s.last_ok_at),
        prompt_tokens=s.prompt_tokens, completion_tokens=s.completion_tokens, cost=s.cost,
    )


def _local_view(s: ComponentStatus, node: str) -> ComponentOut:
    return ComponentOut(kind=s.kind, name=s.name, **_stats(s, node))


def _redacted(spec: ComponentSpec) -> dict[str, Any]:
    """The spec as the API shows it: a secret given inline is hidden (a ${VAR} is not)."""
    out = spec.model_dump(mode="json", exclude_none=True)
    for field in ("secret", "token", "password"):  # a source's, an output's
        secret = out.get(field)
        if isinstance(secret, str) and not (secret.startswith("${") and secret.endswith("}")):
            out[field] = "********"
    return out


def _name_of(body: Any) -> str | None:
    name = body.get("name") if isinstance(body, dict) else getattr(body, "name", None)
    return name if isinstance(name, str) else None


__all__ = ["ControllerCore"]
