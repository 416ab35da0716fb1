"""A rolling restart (or upgrade): one node at a time, drain -> restart -> back, healthy and
every stream current -> the next. It stops, saying why, when a node does not come back.

`precheck` and `next_step` decide, purely, on frozen observations of the node in turn
(`NodeSeen`, read from its /health, /health/cluster and drain); `rolling_restart` is the
thin loop that observes, asks, and performs: POST drain / undrain on the node's API, and
the restart itself, which the caller supplies: the CLI runs `--command` on each node, or,
without one, asks the node itself (`api_restart`: POST /api/v1/node/restart; the node exits
with status 75 and its supervisor starts it again).

A restarted node starts drained (the drain is kept in its data directory), so it takes no
work and leads nothing until the loop has seen it back and undrains it.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import httpx

from nimsforest.drain import DrainState


class Phase(enum.Enum):
    DRAIN = "drain"
    COME_BACK = "come back"  # restarted; waiting for a new process to answer
    CATCH_UP = "catch up"  # undrained; waiting for healthy and every stream current


class StepKind(enum.Enum):
    DRAIN = "drain"
    RESTART = "restart"
    UNDRAIN = "undrain"
    WAIT = "wait"
    ADVANCE = "advance"  # this node is done; the next one
    DONE = "done"
    STOP = "stop"  # give up, with the reason


@dataclass(frozen=True)
class NodeSeen:
    """One node, observed through its API."""

    name: str
    reachable: bool
    started_at: str | None = None  # its process's start (a restart changes it)
    drain: DrainState | None = None
    healthy: bool = False  # /health 200
    whole: bool = False  # /health/cluster 200: every stream led and current, no peer offline
    meta_leader: str | None = None
    reason: str = ""  # what is wrong, one sentence ("" when nothing is)


@dataclass(frozen=True)
class Limits:
    # a cluster not whole at the start (a replica behind under writes, a node still catching
    # up) is waited for this long before the restart is refused
    whole: float = 60.0
    unreachable: float = 10.0  # a node in turn not answering this long before its restart
    drain: float = 120.0
    come_back: float = 300.0
    catch_up: float = 300.0


@dataclass(frozen=True)
class Progress:
    order: tuple[str, ...]
    index: int = 0
    phase: Phase = Phase.DRAIN
    since: float = 0.0  # when the phase began (monotonic)
    started_before: str | None = None  # the node's start before its restart

    @property
    def node(self) -> str | None:
        return self.order[self.index] if self.index < len(self.order) else None


@dataclass(frozen=True)
class Step:
    kind: StepKind
    node: str | None
    sentence: str
    progress: Progress


def restart_order(seen: Sequence[NodeSeen], only: frozenset[str] | None = None) -> tuple[str, ...]:
    """By name, the meta leader last (one leader change for the meta group, not three);
    `only`: just these nodes (the others were observed, not to be restarted)."""
    leaders = {s.meta_leader for s in seen if s.meta_leader}
    names = [s.name for s in seen if only is None or s.name in only]
    return tuple(sorted(names, key=lambda n: (n in leaders, n)))


class Begin(enum.Enum):
    GO = "go"
    WAIT = "wait"  # not whole yet, and it may become so: look again
    REFUSE = "refuse"


@dataclass(frozen=True)
class Start:
    kind: Begin
    sentence: str = ""


def precheck(seen: Sequence[NodeSeen], waited: float = 0.0, limits: Limits = Limits()) -> Start:
    """Whether a rolling restart may begin, `waited` seconds after it was asked for (pure).
    It begins only from a whole cluster: a node restarted while another is behind could
    cost the quorum. A cluster not whole yet (a replica behind under writes, a node still
    catching up) is waited for up to `limits.whole`; too few nodes or a node an operator
    drained will not change by waiting."""
    if len(seen) < 2:
        return Start(Begin.REFUSE, "a rolling restart needs at least two nodes (a lone node has "
                                   "no one to hand over to)")
    bad = [s for s in seen
           if not (s.reachable and s.healthy and s.whole and s.drain is DrainState.SERVING)]
    if not bad:
        return Start(Begin.GO)
    why = "; ".join(f"{s.name}: {s.reason or 'not healthy'}" for s in bad)
    drained = [s.name for s in bad if s.reachable and s.drain in (DrainState.DRAINING,
                                                                    DrainState.DRAINED)]
    if drained:
        return Start(Begin.REFUSE, f"{', '.join(drained)} drained, so no node is restarted "
                                   f"(`nimsforest undrain` first): {why}")
    if waited > limits.whole:
        return Start(Begin.REFUSE, f"the cluster is not whole (for {limits.whole:.0f}s), so no "
                                   f"node is restarted: {why}")
    return Start(Begin.WAIT, f"waiting for the cluster to be whole: {why}")


def next_step(p: Progress, seen: NodeSeen, now: float, limits: Limits) -> Step:
    """What to do for the node in turn (`seen`), given how far it got (pure)."""
    node = p.node
    if node is None:
        return Step(StepKind.DONE, None, f"every node restarted: {', '.join(p.order)}", p)
    elapsed = now - p.since
    if p.phase is Phase.DRAIN:
        if not seen.reachable:
            if elapsed <= limits.unreachable:  # one failed read is not a node that is gone
                return Step(StepKind.WAIT, node, f"{node} does not answer: {seen.reason}", p)
            return Step(StepKind.STOP, node,
                        f"{node} does not answer before its restart (for {limits.unreachable:.0f}s): "
                        f"{seen.reason}", p)
        if seen.drain is DrainState.DRAINED:
            nxt = replace(p, phase=Phase.COME_BACK, since=now, started_before=seen.started_at)
            return Step(StepKind.RESTART, node, f"{node} is drained; restarting it", nxt)
        if elapsed > limits.drain:
            return Step(StepKind.STOP, node,
                        f"{node} did not drain within {limits.drain:.0f}s: {seen.reason}; it stays "
                        "drained (`nimsforest undrain` to serve again)", p)
        if seen.drain is DrainState.SERVING:
            return Step(StepKind.DRAIN, node, f"draining {node}", p)
        return Step(StepKind.WAIT, node, f"{node}: {seen.reason or 'draining'}", p)
    if p.phase is Phase.COME_BACK:
        if seen.reachable and seen.started_at is not None and seen.started_at != p.started_before:
            nxt = replace(p, phase=Phase.CATCH_UP, since=now)
            if seen.drain is DrainState.SERVING:
                return Step(StepKind.WAIT, node, f"{node} is back", nxt)
            return Step(StepKind.UNDRAIN, node, f"{node} is back; undraining it", nxt)
        if elapsed > limits.come_back:
            return Step(StepKind.STOP, node,
                        f"{node} did not come back within {limits.come_back:.0f}s of its restart "
                        f"({seen.reason or 'still the old process'}); the other nodes were not "
                        "touched", p)
        return Step(StepKind.WAIT, node, f"waiting for {node} to come back", p)
    # Phase.CATCH_UP
    if seen.reachable and seen.drain is not DrainState.SERVING and seen.drain is not None:
        return Step(StepKind.UNDRAIN, node, f"undraining {node}", p)
    if seen.reachable and seen.healthy and seen.whole:
        nxt = Progress(p.order, p.index + 1, Phase.DRAIN, now)
        return Step(StepKind.ADVANCE, node, f"{node} is back: healthy and every stream current", nxt)
    if elapsed > limits.catch_up:
        return Step(StepKind.STOP, node,
                    f"{node} came back but is not healthy with every stream current within "
                    f"{limits.catch_up:.0f}s: {seen.reason}; the next nodes were not touched", p)
    return Step(StepKind.WAIT, node, f"{node} catching up: {seen.reason or 'almost'}", p)


# --- acting ---------------------------------------------------------------------------------


class RestartFailed(Exception):
    """The restart of one node could not be done; str() is one sentence."""


@dataclass(frozen=True)
class Target:
    name: str
    api_url: str  # http://host:port of its management API


@dataclass(frozen=True)
class RollResult:
    ok: bool
    sentence: str
    restarted: tuple[str, ...]


async def observe(http: httpx.AsyncClient, target: Target) -> NodeSeen:
    try:
        h, c, d = await asyncio.gather(
            http.get(f"{target.api_url}/health"), http.get(f"{target.api_url}/health/cluster"),
            http.get(f"{target.api_url}/api/v1/node/drain"),
        )
        health, cluster, drain = h.json(), c.json(), d.json()
    except (httpx.HTTPError, ValueError) as exc:
        return NodeSeen(target.name, False, reason=f"its API does not answer ({type(exc).__name__})")
    reasons = [str(r) for r in health.get("reasons", []) if not str(r).startswith("node is drain")]
    reasons += [str(p) for p in cluster.get("problems", [])]
    state = drain.get("state") if d.status_code == 200 else None
    return NodeSeen(
        name=target.name,
        reachable=True,
        started_at=health.get("started_at"),
        drain=DrainState(state) if state in {s.value for s in DrainState} else None,
        healthy=h.status_code == 200,
        whole=c.status_code == 200,
        meta_leader=cluster.get("meta_leader"),
        reason="; ".join(reasons) or str(drain.get("sentence") or ""),
    )


async def rolling_restart(
    targets: Sequence[Target],
    restart: Callable[[Target], Awaitable[None]],
    *,
    limits: Limits = Limits(),
    say: Callable[[str], None] = lambda _s: None,
    poll: float = 0.5,
    headers: dict[str, str] | None = None,
    others: Sequence[Target] = (),
) -> RollResult:
    """Restart every target, one at a time; returns how far it got and why it stopped.
    `others`: the cluster's other nodes, not restarted, but whole like the targets before
    it begins (`--node` restarts some nodes of a cluster)."""
    by_name = {t.name: t for t in targets}
    restarted: list[str] = []
    async with httpx.AsyncClient(timeout=5, headers=headers or {}, trust_env=False) as http:
        asked, said = time.monotonic(), ""
        while True:
            seen = await asyncio.gather(*(observe(http, t) for t in (*targets, *others)))
            start = precheck(seen, time.monotonic() - asked, limits)
            if start.kind is Begin.GO:
                break
            if start.kind is Begin.REFUSE:
                return RollResult(False, start.sentence, ())
            if start.sentence != said:
                say(start.sentence)
                said = start.sentence
            await asyncio.sleep(poll)
        p = Progress(restart_order(seen, frozenset(by_name)), since=time.monotonic())
        say(f"restarting one at a time: {', '.join(p.order)}")
        said = ""
        while True:
            target = by_name[p.node] if p.node else None
            now_seen = await observe(http, target) if target else NodeSeen("", False)
            step = next_step(p, now_seen, time.monotonic(), limits)
            if step.sentence != said:
                say(step.sentence)
                said = step.sentence
            if step.kind is StepKind.DONE:
                return RollResult(True, step.sentence, tuple(restarted))
            if step.kind is StepKind.STOP:
                return RollResult(False, step.sentence, tuple(restarted))
            assert target is not None
            try:
                await _perform(http, step.kind, target, restart)
            except RestartFailed as exc:
                return RollResult(False, f"{target.name}: {exc}; it stays drained", tuple(restarted))
            if step.kind is StepKind.ADVANCE:
                restarted.append(target.name)
            p = step.progress
            if step.kind in (StepKind.WAIT, StepKind.DRAIN, StepKind.UNDRAIN):
                await asyncio.sleep(poll)


async def _perform(http: httpx.AsyncClient, kind: StepKind, target: Target,
                   restart: Callable[[Target], Awaitable[None]]) -> None:
    if kind is StepKind.DRAIN:
        await _post(http, f"{target.api_url}/api/v1/node/drain")
    elif kind is StepKind.UNDRAIN:
        await _post(http, f"{target.api_url}/api/v1/node/undrain")
    elif kind is StepKind.RESTART:
        await restart(target)


def api_restart(headers: dict[str, str] | None = None) -> Callable[[Target], Awaitable[None]]:
    """The restart of a node through its own API (for nodes without ssh): POST
    /api/v1/node/restart, answered 202 before the node stops and exits for its supervisor
    to start it again. Anything else is a RestartFailed."""

    async def restart(target: Target) -> None:
        async with httpx.AsyncClient(timeout=10, headers=headers or {}, trust_env=False) as http:
            url = f"{target.api_url}/api/v1/node/restart"
            try:
                r = await http.post(url)
            except httpx.HTTPError as exc:
                raise RestartFailed(f"POST {url} was not answered ({type(exc).__name__})") from None
            if r.status_code != 202:
                try:
                    error = r.json().get("error")
                except ValueError:
                    error = None
                raise RestartFailed(f"POST {url} answered {r.status_code}: {error or r.text[:200]}")

    return restart


async def _post(http: httpx.AsyncClient, url: str) -> None:
    try:
        r = await http.post(url)
    except httpx.HTTPError:
        return  # not reached: the next observation says what came of it
    if r.status_code >= 300:
        try:
            error = r.json().get("error")
        except ValueError:
            error = None
        raise RestartFailed(f"POST {url} answered {r.status_code}: {error or r.text[:200]}")


__all__ = [
    "Limits",
    "NodeSeen",
    "Phase",
    "Progress",
    "RestartFailed",
    "RollResult",
    "Step",
    "StepKind",
    "Target",
    "api_restart",
    "next_step",
    "observe",
    "Begin",
    "Start",
    "precheck",
    "restart_order",
    "rolling_restart",
]
