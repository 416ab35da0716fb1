"""Drain: a node that takes no new work and leads nothing, so that stopping or restarting
it is something no client notices.

    SERVING    the node takes work
    DRAINING   its forest stops pulling; it hands over every meta, stream and consumer
               leadership its nats-server holds (with a preferred current successor);
               an operator's drain also refuses new River input (503 + Retry-After)
    DRAINED    it leads nothing a step-down can hand over, and (an operator's drain) holds
               no single-replica stream: each was moved to a serving node first.

A single-replica (R1) stream has no other copy to lead it. An operator's drain moves each
one whose only replica is here to another serving node (JetStream's own stream move: its
placement is updated to name that node's `node:<name>` tag; the new server copies it,
becomes its leader, and this one lets it go; no message is lost) and is drained only once
none is left here. With no other serving node to take one, it says so and stays draining.
A graceful stop moves nothing (the node comes back): it names them. Single-replica
consumers of a replicated stream cannot be moved; they are named.

An operator's drain (`nimsforest drain`, POST /api/v1/node/drain) is kept in the data
directory (the file `drained`), so the node starts drained until it is undrained. A
graceful stop (SIGTERM) drains first, for at most NIMSFOREST_DRAIN_TIMEOUT, without
keeping anything: the node comes back serving. While a node drains it keeps handing over
whatever JetStream elects onto it (a new consumer, a leader lost elsewhere).

`plan(observation)` is the decision, pure and tested on frozen observations;
`Drainer.run()` is the thin loop that observes, plans and performs.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nats.js.api import Placement

from natsembed import NODE_TAG, Leaderships, Led, held, is_witness, node_of, step_down
from natsembed.errors import reason

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from natsembed import EmbeddedNats

log = logging.getLogger("nimsforest")

MARKER = "drained"  # the file in the data directory that keeps an operator's drain
# Each draining node says so every cycle on ANNOUNCE.<node> ({"state": ...}), and once
# when it serves again; the others never hand a leadership to a node heard draining
# within PEER_TTL seconds (it would hand it straight back).
ANNOUNCE = "forest.node.drain"
PEER_TTL = 5.0
# A node restarted through its API (POST /api/v1/node/restart) stops with this exit status
# (EX_TEMPFAIL) for its supervisor to start it again: the shipped systemd units restart it
# (Restart=always, RestartForceExitStatus=75); a container needs a restart policy.
RESTART_EXIT_STATUS = 75
NAME_TAG = "node:"  # every node's nats-server carries the tag node:<its name> (natsembed)


class DrainState(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"
    DRAINED = "drained"


class MoveRefused(Exception):
    """JetStream refused to move a single-replica stream (the message says which, why)."""


class DrainReason(enum.Enum):
    OPERATOR = "operator"  # kept across restarts until undrained; refuses new input
    STOP = "stop"  # a graceful stop; not kept


class DrainAction(enum.Enum):
    PAUSE_WORK = "pause work"  # stop the forest's components (they nak what is in flight)
    RESUME_WORK = "resume work"
    STEP_DOWN = "step down"
    MOVE = "move"  # move single-replica streams to serving nodes (DrainPlan.moves)


@dataclass(frozen=True)
class Home:
    """Another server of the cluster, as its tags describe it."""

    name: str
    tags: tuple[str, ...]

    @property
    def takes_streams(self) -> bool:
        """A node's nats-server (a witness never holds streams)."""
        return NODE_TAG in self.tags and not is_witness(self.name)


@dataclass(frozen=True)
class Move:
    """Move the single-replica stream `stream` to the server `to` (tags: `to_tags`)."""

    stream: str
    to: str
    to_tags: tuple[str, ...] = ()


def moved_placement(current: tuple[str, ...], move: Move) -> tuple[str, ...]:
    """The placement tags that move a stream to `move.to` (pure): the tags it had that the
    new server also carries (a zone, role:node), no other node's name, and the new name."""
    kept = tuple(t for t in current if not t.startswith(NAME_TAG) and t in move.to_tags)
    return (*kept, f"{NAME_TAG}{move.to}")


@dataclass(frozen=True)
class DrainObservation:
    """What one drain cycle knows, read once at its start."""

    wanted: DrainReason | None  # None: serve
    work_running: bool  # the forest's components pull
    own_server: bool  # the node runs its own nats-server (not a sidecar)
    held: Leaderships | None = None  # what that server leads; None: not read
    error: str | None = None  # why it could not be read
    own_witness: str | None = None  # this node's witness (it stops with the node)
    peers_draining: frozenset[str] = frozenset()  # other nodes that said they drain
    # the cluster's other servers, read when a single-replica stream must move (None: not
    # read, or `homes_error` says why)
    homes: tuple[Home, ...] | None = None
    homes_error: str | None = None
    clustered: bool = True  # a cluster node (a standalone node has nowhere to move streams)


@dataclass(frozen=True)
class DrainPlan:
    state: DrainState
    actions: tuple[DrainAction, ...]
    sentence: str
    hand_over: Leaderships | None = None  # what STEP_DOWN asks to hand over
    moves: tuple[Move, ...] = ()  # what MOVE asks to move


def plan(obs: DrainObservation) -> DrainPlan:
    """What to do next, and the node's drain state as observed (pure)."""
    if obs.wanted is None:
        if obs.work_running:
            return DrainPlan(DrainState.SERVING, (), "serving")
        return DrainPlan(DrainState.SERVING, (DrainAction.RESUME_WORK,),
                         "undrained: the forest pulls again")
    actions: list[DrainAction] = []
    waiting: list[str] = []
    if obs.work_running:
        actions.append(DrainAction.PAUSE_WORK)
        waiting.append("stopping the forest's components")
    single: tuple[str, ...] = ()
    notes: list[str] = []
    hand_over: Leaderships | None = None
    moves: tuple[Move, ...] = ()
    meta_stays = False
    if obs.own_server:
        if obs.held is None:
            waiting.append(f"cannot read what this server leads ({obs.error or 'no answer'})")
        else:
            now = obs.held
            single = tuple(str(x) for x in now.single)
            # successors: current replicas on nodes that do not drain themselves; the meta
            # group never goes to this node's own witness (it stops with the node)
            # (candidates are server names, the drained peers nodes: natsembed._names)
            avoid = obs.peers_draining | {obs.own_witness or ""}
            meta_to = next((c for c in now.meta_candidates if node_of(c) not in avoid), None)
            meta_stays = now.meta and meta_to is None
            ready: list[Led] = []
            stuck: list[str] = []
            for x in now.movable:
                to = next((c for c in x.candidates if node_of(c) not in avoid), None)
                if to is None:
                    stuck.append(str(x))
                else:
                    ready.append(replace(x, candidates=(to,)))
            leads = (["the meta group"] if now.meta and not meta_stays else []) + [
                str(x) for x in ready
            ]
            if leads:
                actions.append(DrainAction.STEP_DOWN)
                hand_over = replace(now, meta=now.meta and not meta_stays, led=tuple(ready),
                                    meta_candidates=(meta_to,) if meta_to else ())
                waiting.append("handing over " + ", ".join(leads))
            if stuck and obs.wanted is DrainReason.OPERATOR:
                waiting.append("no current replica on a serving node yet for " + ", ".join(stuck))
            elif stuck:  # a stop does not wait for replicas that are not there
                notes.append("no current replica on a serving node for " + ", ".join(stuck))
            if obs.wanted is DrainReason.OPERATOR and obs.clustered:
                moves, single = _evacuate(obs, now, waiting)
    if waiting:
        return DrainPlan(DrainState.DRAINING, tuple(actions) + ((DrainAction.MOVE,) if moves else ()),
                         "draining: " + "; ".join(waiting), hand_over, moves)
    sentence = "drained: the forest is stopped and this node leads nothing"
    if meta_stays:
        sentence = ("drained: the forest is stopped; the meta group stays led here (no other "
                    "node can lead it)")
    for note in notes:
        sentence += f"; {note}"
    if single:
        sentence += (
            "; single-replica assets stay here (no other copy can lead them): "
            + ", ".join(single) + "; scale them up before the node is removed for good"
        )
    return DrainPlan(DrainState.DRAINED, (), sentence)


def _evacuate(obs: DrainObservation, now: Leaderships,
              waiting: list[str]) -> tuple[tuple[Move, ...], tuple[str, ...]]:
    """An operator's drain: where each single-replica stream held here goes (the serving
    nodes in turn); appends what it waits for to `waiting`. Returns the moves and the
    single-replica assets that stay (consumers of replicated streams)."""
    streams = [x.stream for x in now.single if x.consumer is None]
    moving = set(streams)
    # an R1 stream's consumers go with it; an R1 consumer of a replicated stream stays
    stays = tuple(str(x) for x in now.single if x.consumer is not None and x.stream not in moving)
    if not streams:
        return (), stays
    if obs.homes is None:
        waiting.append(f"cannot read which nodes could take the single-replica stream(s) "
                       f"{', '.join(streams)} ({obs.homes_error or 'no answer'})")
        return (), stays
    avoid = obs.peers_draining | {node_of(now.server), obs.own_witness or ""}
    homes = sorted((h for h in obs.homes if h.takes_streams and h.name not in avoid),
                   key=lambda h: h.name)
    if not homes:
        waiting.append("no other serving node can take the single-replica stream(s) "
                       f"{', '.join(streams)}: they stay here, so the drain is not done (start "
                       "or undrain another node, or scale them up)")
        return (), stays
    moves = tuple(Move(name, homes[i % len(homes)].name, homes[i % len(homes)].tags)
                  for i, name in enumerate(streams))
    waiting.append("moving single-replica " + ", ".join(f"{m.stream} to {m.to}" for m in moves))
    return moves, stays


@dataclass(frozen=True)
class DrainStatus:
    """The node's drain, for /health and the API."""

    state: DrainState
    reason: DrainReason | None
    since: float | None  # time.time() the drain was asked for
    sentence: str
    leads: tuple[str, ...] = ()  # what it still leads that can move (meta, stream, stream/consumer)
    single: tuple[str, ...] = ()  # single-replica assets it leads

    @property
    def refuses_input(self) -> bool:
        """An operator's drain refuses new River input (a load balancer moves clients)."""
        return self.reason is DrainReason.OPERATOR

    @property
    def closes_connections(self) -> bool:
        """While any drain is on (an operator's or a stop's), every answer closes its
        connection, so a client's next request opens a new one (to another node, or refused
        at once once the listener is closed) instead of racing the stop's close of a kept-alive
        connection, where a request already sent is lost without an answer."""
        return self.state is not DrainState.SERVING

    def doc(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "reason": self.reason.value if self.reason else None,
            "since": self.since,
            "sentence": self.sentence,
            "leads": list(self.leads),
            "single_replica": list(self.single),
            "refuses_input": self.refuses_input,
        }


class Work(Protocol):
    """What the drain pauses: the node's forest."""

    @property
    def running(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until `event` is set or `seconds` pass. (Not asyncio.wait_for: on Python 3.11 it
    swallows a cancellation that arrives as the event is set, and the task never ends.)"""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def marker_path(data_dir: Path) -> Path:
    return data_dir / MARKER


def kept_drain(data_dir: Path) -> float | None:
    """When an operator drained this node (kept in the data directory), or None."""
    path = marker_path(data_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return time.time()  # there but unreadable: still drained
    try:
        return float(json.loads(text)["since"])
    except (ValueError, KeyError, TypeError):
        return time.time()  # a hand-made marker: drained all the same


class Drainer:
    """The node's drain: state, the loop that reaches it, and keeping it across restarts."""

    def __init__(
        self,
        node: str,
        data_dir: Path,
        embedded: EmbeddedNats | None,
        *,
        nc: Client | None = None,
        interval: float = 1.0,
        clustered: bool = True,
    ) -> None:
        """`clustered`: a cluster node, whose operator's drain moves its single-replica
        streams to other nodes (a standalone node keeps them)."""
        self.node = node
        self._clustered = clustered
        self._nc = nc
        self._peers: dict[str, tuple[DrainState, float]] = {}
        self._announced = DrainState.SERVING
        self._data_dir = data_dir
        self._embedded = embedded
        self._interval = interval
        self._work: Work | None = None
        since = kept_drain(data_dir)
        self._wanted: DrainReason | None = DrainReason.OPERATOR if since is not None else None
        self._since = since
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        initial = DrainState.DRAINING if since is not None else DrainState.SERVING
        self._status = DrainStatus(initial, self._wanted, since,
                                   "draining: kept from before the restart" if since else "serving")

    # --- what others read ------------------------------------------------------------------
    @property
    def wanted(self) -> DrainReason | None:
        return self._wanted

    def status(self) -> DrainStatus:
        return self._status

    def attach(self, work: Work) -> None:
        """The forest to pause while drained (built after the drainer)."""
        self._work = work

    # --- what the API and the stop ask for -------------------------------------------------
    def drain(self, why: DrainReason = DrainReason.OPERATOR) -> DrainStatus:
        """Start draining (an operator's drain is kept in the data directory)."""
        if why is DrainReason.OPERATOR:
            if self._wanted is not DrainReason.OPERATOR:
                self._since = time.time()
            try:
                self._data_dir.mkdir(parents=True, exist_ok=True)
                marker_path(self._data_dir).write_text(json.dumps({"since": self._since}) + "\n")
            except OSError as exc:
                log.warning("Drained, but the drain cannot be kept across a restart: %s",
                            exc.strerror or exc)
            self._wanted = why
        elif self._wanted is None:
            self._since, self._wanted = time.time(), why
        if self._status.state is DrainState.SERVING:
            self._publish(self._planned(DrainState.DRAINING, f"draining: asked ({why.value})"))
        self._wake.set()
        return self._status

    def undrain(self) -> DrainStatus:
        with contextlib.suppress(FileNotFoundError):
            marker_path(self._data_dir).unlink()
        self._wanted, self._since = None, None
        self._publish(DrainStatus(DrainState.SERVING, None, None, "undrained: resuming work"))
        self._wake.set()
        return self._status

    async def drain_for_stop(self, timeout: float) -> DrainStatus:
        """Drain before a graceful stop; returns when drained or after `timeout`."""
        self.drain(DrainReason.STOP)
        deadline = time.monotonic() + timeout
        while self._status.state is not DrainState.DRAINED and self._wanted is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("Stopping before the drain finished (%.0fs): %s", timeout,
                            self._status.sentence)
                break
            self._changed.clear()
            await _wait(self._changed, left)
        return self._status

    # --- the loop --------------------------------------------------------------------------
    def peers_draining(self) -> frozenset[str]:
        """Other nodes heard draining (or drained) within PEER_TTL seconds."""
        now = time.monotonic()
        return frozenset(n for n, (state, at) in self._peers.items()
                         if state is not DrainState.SERVING and now - at < PEER_TTL)

    async def _heard(self, msg: Msg) -> None:
        node = msg.subject[len(ANNOUNCE) + 1:]
        if node == self.node:
            return
        try:
            state = DrainState(json.loads(msg.data)["state"])
        except (ValueError, KeyError, TypeError):
            return  # not an announcement of ours
        self._peers[node] = (state, time.monotonic())

    async def _announce(self) -> None:
        state = self._status.state
        if self._nc is None or (state is DrainState.SERVING and self._announced is state):
            return
        with contextlib.suppress(Exception):  # best effort: peers forget after PEER_TTL
            await self._nc.publish(f"{ANNOUNCE}.{self.node}",
                                   json.dumps({"state": state.value}).encode())
            self._announced = state

    async def run(self) -> None:
        """Observe, plan, perform; every `interval` or when woken. Lives through errors."""
        sub = None
        if self._nc is not None:
            try:
                sub = await self._nc.subscribe(f"{ANNOUNCE}.*", cb=self._heard)
            except Exception as exc:  # noqa: BLE001 - drains still work, less well
                log.warning("Cannot hear other nodes' drains (%s)", reason(exc))
        try:
            await self._loop()
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _loop(self) -> None:
        while True:
            try:
                await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the loop lives on; state says why
                self._publish(self._planned(
                    DrainState.DRAINING if self._wanted else DrainState.SERVING,
                    f"{'draining' if self._wanted else 'serving'}: the drain cycle failed "
                    f"({reason(exc)})",
                ))
            await self._announce()
            self._wake.clear()
            await _wait(self._wake, self._interval)

    async def cycle(self) -> DrainPlan:
        obs = await self.observe()
        decided = plan(obs)
        for action in decided.actions:
            await self._perform(action, decided)
        leads: tuple[str, ...] = ()
        if obs.held is not None:
            leads = (("meta",) if obs.held.meta else ()) + tuple(str(x) for x in obs.held.movable)
        single = tuple(str(x) for x in obs.held.single) if obs.held else ()
        self._publish(DrainStatus(decided.state, obs.wanted, self._since, decided.sentence,
                                  leads, single))
        return decided

    async def observe(self) -> DrainObservation:
        wanted = self._wanted
        running = self._work.running if self._work is not None else False
        embedded = self._embedded
        if wanted is None or embedded is None:
            return DrainObservation(wanted, running, embedded is not None)
        witness, peers = embedded.witness_name, self.peers_draining()
        try:
            now = await held(embedded)
        except Exception as exc:  # noqa: BLE001 - reported in the sentence
            return DrainObservation(wanted, running, True, error=reason(exc), own_witness=witness,
                                    peers_draining=peers)
        homes: tuple[Home, ...] | None = None
        homes_error: str | None = None
        if (self._clustered and wanted is DrainReason.OPERATOR
                and any(x.consumer is None for x in now.single)):
            try:
                async with embedded.system_client() as sysc:
                    tags = await sysc.server_tags()
                # a home is a node (its tag node:<name> places streams), not a server name
                homes = tuple(Home(node_of(name), t) for name, t in sorted(tags.items()))
            except Exception as exc:  # noqa: BLE001 - reported in the sentence
                homes_error = reason(exc)
        return DrainObservation(wanted, running, True, held=now, own_witness=witness,
                                peers_draining=peers, homes=homes, homes_error=homes_error,
                                clustered=self._clustered)

    async def _perform(self, action: DrainAction, decided: DrainPlan) -> None:
        if action is DrainAction.PAUSE_WORK and self._work is not None:
            await self._work.stop()
        elif action is DrainAction.RESUME_WORK and self._work is not None:
            await self._work.start()
        elif action is DrainAction.STEP_DOWN and self._embedded is not None and decided.hand_over:
            for refusal in await step_down(self._embedded, decided.hand_over):
                log.debug("Step-down refused: %s", refusal)
        elif action is DrainAction.MOVE and self._nc is not None:
            await self._move(decided.moves)

    async def _move(self, moves: tuple[Move, ...]) -> None:
        """Update each stream's placement to its new server (JetStream moves it); asked
        again every cycle until it left, a no-op once asked. Raises the first refusal."""
        assert self._nc is not None
        js = self._nc.jetstream()
        refused: list[str] = []
        for m in moves:
            try:
                cfg = (await js.stream_info(m.stream)).config
                have = tuple(cfg.placement.tags or ()) if cfg.placement else ()
                tags = moved_placement(have, m)
                if have == tags:
                    continue  # asked already: JetStream is copying it
                cfg.placement = Placement(cluster=cfg.placement.cluster if cfg.placement else None,
                                          tags=list(tags))
                await js.update_stream(cfg)
                log.info("Drain: moving the single-replica stream %s to %s", m.stream, m.to)
            except Exception as exc:  # noqa: BLE001 - said in the drain's sentence
                refused.append(f"{m.stream} cannot move to {m.to}: {reason(exc)}")
        if refused:
            raise MoveRefused("; ".join(refused))

    def _planned(self, state: DrainState, sentence: str | None = None) -> DrainStatus:
        s = self._status
        return DrainStatus(state, self._wanted, self._since, sentence or s.sentence, s.leads,
                           s.single)

    def _publish(self, status: DrainStatus) -> None:
        old, self._status = self._status, status
        if (old.state, old.sentence) != (status.state, status.sentence):
            log.info("Drain: %s", status.sentence)
        self._changed.set()


__all__ = [
    "ANNOUNCE",
    "MARKER",
    "PEER_TTL",
    "RESTART_EXIT_STATUS",
    "DrainAction",
    "DrainObservation",
    "DrainPlan",
    "DrainReason",
    "DrainState",
    "DrainStatus",
    "Drainer",
    "Home",
    "Move",
    "MoveRefused",
    "Work",
    "kept_drain",
    "marker_path",
    "moved_placement",
    "plan",
]
