"""The loop that keeps this node's Forest equal to the desired state in the FOREST bucket.

One loop, one sentence: each cycle opens a KV watch, folds the current values into a
snapshot, applies it with `Forest.reload()` (atomic on this node: changed components
restart alone, unchanged ones are untouched), then applies each later change the same
way. Changes that arrive together (a reload writes several keys) are applied together.

It keeps going through errors: a lost watch, JetStream unavailable or a reconnect start
a new cycle with a fresh snapshot (a resync). A cycle also resyncs when the bucket has
moved past what the watch delivered for two checks in a row (a watch that silently
stopped). An entry this node cannot build (a script that does not compile, an
environment variable it lacks, a brain key) is FAILED here with its sentence; the others
apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

import nats.errors

from natsembed.errors import reason
from nimsforest.control._desired import desired_config
from nimsforest.control._store import DesiredStore, Stored, apply_update
from nimsforest.forest import (
    ComponentRef,
    ForestConfig,
    ForestConfigError,
    Problem,
    ProblemKind,
    ReloadDiff,
)

if TYPE_CHECKING:
    from nimsforest.forest import Forest

log = logging.getLogger("nimsforest.control")


class WatchState(StrEnum):
    STARTING = "starting"
    IN_STEP = "in step"  # the forest runs the desired state as last seen
    RETRYING = "retrying"  # the watch or an apply failed; a new cycle follows
    STOPPED = "stopped"


@dataclass(frozen=True)
class WatchStatus:
    state: WatchState
    sentence: str
    revision: int  # the last bucket revision applied to this node's forest
    cycles: int  # watches opened (1 + resyncs)
    problems: dict[ComponentRef, Problem] = field(default_factory=dict)  # not applied here


class _Resync(Exception):
    pass


class DesiredWatcher:
    def __init__(
        self,
        store: DesiredStore,
        forest: Forest,
        base: Callable[[], ForestConfig],
        *,
        check_interval: float = 5.0,
        settle: float = 0.05,
        max_backoff: float = 10.0,
    ) -> None:
        self._store = store
        self._forest = forest
        self._base = base
        self._check = check_interval
        self._settle = settle
        self._max_backoff = max_backoff
        self.entries: dict[str, Stored] = {}
        self._state = WatchState.STARTING
        self._sentence = "starting: no desired state read yet"
        self._revision = 0
        self._seen = 0
        self._cycles = 0
        self._problems: dict[ComponentRef, Problem] = {}
        self._applied = asyncio.Condition()
        self._first = asyncio.Event()
        self._resync = asyncio.Event()
        self.last_diff: ReloadDiff | None = None

    # --- views -----------------------------------------------------------------------------
    def status(self) -> WatchStatus:
        return WatchStatus(
            self._state, self._sentence, self._revision, self._cycles, dict(self._problems)
        )

    @property
    def revision(self) -> int:
        return self._revision

    def problem(self, ref: ComponentRef) -> Problem | None:
        return self._problems.get(ref)

    async def wait_first_apply(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):  # not wait_for: it can swallow a cancel
            async with asyncio.timeout(timeout):
                await self._first.wait()
        return self._first.is_set()

    async def wait_applied(self, revision: int, timeout: float) -> bool:
        """True once the forest runs the desired state at `revision` or later."""

        async def wait() -> None:
            async with self._applied:
                await self._applied.wait_for(lambda: self._revision >= revision)

        try:
            await asyncio.wait_for(wait(), timeout)
            return True
        except TimeoutError:
            return False

    def resync(self) -> None:
        """Start a new cycle with a fresh snapshot (e.g. after a NATS reconnect)."""
        self._resync.set()

    # --- the loop --------------------------------------------------------------------------
    async def run(self) -> None:
        backoff = 0.5
        try:
            while True:
                try:
                    await self._cycle()
                    backoff = 0.5
                except asyncio.CancelledError:
                    raise
                except _Resync as exc:
                    self._set(WatchState.RETRYING, f"resyncing: {exc}")
                except Exception as exc:  # noqa: BLE001 - the loop lives on
                    self._set(
                        WatchState.RETRYING,
                        f"cannot follow the desired state ({reason(exc)}); "
                        f"retrying in {backoff:g}s",
                        warn=True,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
        finally:
            self._set(WatchState.STOPPED, "stopped")

    async def _cycle(self) -> None:
        self._resync.clear()
        self._cycles += 1
        w = await self._store.watch()
        try:
            entries: dict[str, Stored] = {}
            seen = 0
            while True:  # the current values, up to the None marker
                e = await w.updates(timeout=max(self._check, 10.0))
                if e is None:
                    break
                seen = max(seen, int(e.revision or 0))
                apply_update(entries, e)
            seen = max(seen, await self._store.last_revision())
            await self._apply(entries, seen)
            behind_at = 0
            while True:
                if self._resync.is_set():
                    raise _Resync("asked to")
                try:
                    e = await w.updates(timeout=self._check)
                except nats.errors.TimeoutError:
                    last = await self._store.last_revision()
                    if last <= seen:
                        behind_at = 0
                    elif behind_at == last:
                        raise _Resync(f"the watch stopped at revision {seen} of {last}") from None
                    else:
                        behind_at = last
                    continue
                if e is None:
                    continue
                seen = max(seen, int(e.revision or 0))
                apply_update(entries, e)
                seen = await self._drain(w, entries, seen)
                await self._apply(entries, seen)
        finally:
            with contextlib.suppress(Exception):
                await w.stop()

    async def _drain(self, w: object, entries: dict[str, Stored], seen: int) -> int:
        """Fold in whatever else arrives within `settle` (the rest of a multi-key change)."""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                e = await w.updates(timeout=self._settle)  # type: ignore[attr-defined]
            except nats.errors.TimeoutError:
                break
            if e is None:
                continue
            seen = max(seen, int(e.revision or 0))
            apply_update(entries, e)
        return seen

    async def _apply(self, entries: dict[str, Stored], revision: int) -> None:
        config, problems = desired_config(self._base(), [s.entry for s in entries.values()])
        diff: ReloadDiff | None = None
        for _ in range(len(entries) + 1):
            try:
                diff = await self._forest.reload(config, fail_alone=True)
                break
            except ForestConfigError as exc:  # left out on this node; the others apply
                if exc.ref is None:
                    raise
                problems[exc.ref] = Problem(
                    ref=exc.ref, kind=ProblemKind.INVALID, sentence=str(exc)
                )
                config = config.with_spec(exc.ref.kind, exc.ref.name, None)
        self.entries = dict(entries)
        self._problems = problems
        self.last_diff = diff
        async with self._applied:
            self._revision = max(self._revision, revision)
            self._seen = revision
            self._applied.notify_all()
        self._first.set()
        extra = f", {len(problems)} not applied here" if problems else ""
        for problem in problems.values():
            log.warning("Desired %s is not applied on this node: %s", problem.ref, problem.sentence)
        self._set(
            WatchState.IN_STEP,
            f"in step with the desired state at revision {revision}: "
            f"{len(entries) - len(problems)} components{extra}",
        )

    def _set(self, state: WatchState, sentence: str, *, warn: bool = False) -> None:
        changed = state is not self._state
        self._state, self._sentence = state, sentence
        if changed:
            (log.warning if warn else log.info)("Forest control: %s", sentence)


__all__ = ["DesiredWatcher", "WatchState", "WatchStatus"]
