"""Drain: the decision on frozen observations, and a real node drained, restarted and undrained."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
from nats.js.api import Placement, StreamConfig

from natsembed import NODE_TAG, Leaderships, Led
from nimsforest.deploy.rolling import Target, api_restart
from nimsforest.drain import (
    RESTART_EXIT_STATUS,
    DrainAction,
    Drainer,
    DrainObservation,
    DrainReason,
    DrainState,
    Home,
    Move,
    moved_placement,
    plan,
)
from tests.support import EmbeddedFactory, NodeProcess, eventually, routed_servers

OPERATOR = DrainReason.OPERATOR
RIVER = Led("RIVER", None, ("n2", "n3"), 3)
CONSUMER = Led("WIND", "tree-contacts", ("n3",), 3)
ONE = Led("ONE", None, (), 1)


def holding(*led: Led, meta: bool = False, successor: str | None = "n2") -> Leaderships:
    return Leaderships("n1", meta, (successor,) if meta and successor else (), led)


def test_serving_with_the_forest_running_does_nothing() -> None:
    p = plan(DrainObservation(None, work_running=True, own_server=True))
    assert (p.state, p.actions) == (DrainState.SERVING, ())


def test_undrained_resumes_the_forest() -> None:
    p = plan(DrainObservation(None, work_running=False, own_server=True))
    assert (p.state, p.actions) == (DrainState.SERVING, (DrainAction.RESUME_WORK,))


def test_a_drain_pauses_work_and_hands_over_every_movable_leadership() -> None:
    now = holding(RIVER, CONSUMER, ONE, meta=True)
    p = plan(DrainObservation(OPERATOR, work_running=True, own_server=True, held=now))
    assert p.state is DrainState.DRAINING
    assert p.actions == (DrainAction.PAUSE_WORK, DrainAction.STEP_DOWN)
    assert p.hand_over is not None and p.hand_over.meta and p.hand_over.meta_successor == "n2"
    assert [(str(x), x.candidates) for x in p.hand_over.led] == [("RIVER", ("n2",)), ("WIND/tree-contacts", ("n3",))]
    assert "the meta group, RIVER, WIND/tree-contacts" in p.sentence


def test_a_stop_is_drained_once_nothing_movable_is_led_single_replica_assets_are_named() -> None:
    p = plan(DrainObservation(DrainReason.STOP, work_running=False, own_server=True, held=holding(ONE)))
    assert (p.state, p.actions) == (DrainState.DRAINED, ())
    assert "ONE" in p.sentence and "single-replica" in p.sentence


NODES = (Home("n1", (NODE_TAG, "node:n1")), Home("n1-witness-x", ("role:witness",)),
         Home("n2", (NODE_TAG, "node:n2", "zone:b")), Home("n3", (NODE_TAG, "node:n3")))
ONE_CONSUMER = Led("ONE", "c", (), 1)
TWO = Led("TWO", None, (), 1)


def test_an_operators_drain_moves_each_single_replica_stream_to_a_serving_node_in_turn() -> None:
    now = holding(ONE, ONE_CONSUMER, TWO, Led("WIND", "r1-consumer", (), 1))
    p = plan(DrainObservation(OPERATOR, False, True, held=now, homes=NODES))
    assert p.state is DrainState.DRAINING and p.actions == (DrainAction.MOVE,)
    assert [(m.stream, m.to) for m in p.moves] == [("ONE", "n2"), ("TWO", "n3")]
    assert "moving single-replica ONE to n2, TWO to n3" in p.sentence
    # never to a node that drains itself, nor to a witness
    p = plan(DrainObservation(OPERATOR, False, True, held=now, homes=NODES,
                              peers_draining=frozenset({"n2"})))
    assert [(m.stream, m.to) for m in p.moves] == [("ONE", "n3"), ("TWO", "n3")]
    # once moved, an R1 consumer of a replicated stream is named, and the drain is done
    done = plan(DrainObservation(OPERATOR, False, True, held=holding(Led("WIND", "r1", (), 1)),
                                 homes=NODES))
    assert done.state is DrainState.DRAINED and "WIND/r1" in done.sentence


def test_with_no_other_serving_node_a_single_replica_stream_keeps_the_drain_from_done() -> None:
    alone = (NODES[0], NODES[1])
    p = plan(DrainObservation(OPERATOR, False, True, held=holding(ONE), homes=alone))
    assert (p.state, p.actions, p.moves) == (DrainState.DRAINING, (), ())
    assert "no other serving node can take the single-replica stream(s) ONE" in p.sentence
    unread = plan(DrainObservation(OPERATOR, False, True, held=holding(ONE), homes_error="timeout"))
    assert unread.state is DrainState.DRAINING and "(timeout)" in unread.sentence
    standalone = plan(DrainObservation(OPERATOR, False, True, held=holding(ONE), clustered=False))
    assert standalone.state is DrainState.DRAINED and "ONE" in standalone.sentence


def test_a_moved_stream_keeps_the_tags_its_new_server_has_and_names_that_server() -> None:
    move = Move("ONE", "n2", NODES[2].tags)
    assert moved_placement((NODE_TAG, "node:n1", "zone:b", "ssd"), move) == (NODE_TAG, "zone:b", "node:n2")
    assert moved_placement((), move) == ("node:n2",)


def test_the_meta_group_is_never_handed_to_the_nodes_own_witness() -> None:
    now = holding(RIVER, meta=True, successor="n1-witness")
    p = plan(DrainObservation(OPERATOR, False, True, held=now, own_witness="n1-witness"))
    assert p.actions == (DrainAction.STEP_DOWN,)
    assert p.hand_over is not None and not p.hand_over.meta and [str(x) for x in p.hand_over.led] == ["RIVER"]
    alone = plan(DrainObservation(OPERATOR, False, True, held=holding(meta=True, successor=None)))
    assert alone.state is DrainState.DRAINED and "meta group stays" in alone.sentence


def test_a_leadership_with_no_current_replica_elsewhere_holds_an_operators_drain_not_a_stop() -> None:
    lagging = holding(Led("RIVER", None, (), 3), CONSUMER)
    p = plan(DrainObservation(OPERATOR, False, True, held=lagging))
    assert p.state is DrainState.DRAINING and "no current replica on a serving node yet for RIVER" in p.sentence
    assert p.hand_over is not None and p.hand_over.led == (CONSUMER,)  # what can move, moves
    alone = plan(DrainObservation(DrainReason.STOP, False, True, held=holding(Led("RIVER", None, (), 3))))
    assert alone.state is DrainState.DRAINED and alone.actions == ()


def test_successors_are_never_nodes_that_drain_themselves() -> None:
    now = holding(RIVER, CONSUMER, meta=True, successor="n2")
    p = plan(DrainObservation(OPERATOR, False, True, held=now, peers_draining=frozenset({"n2"})))
    assert p.hand_over is not None and not p.hand_over.meta  # n2 was the only meta successor
    assert [(str(x), x.candidates) for x in p.hand_over.led] == [("RIVER", ("n3",)), ("WIND/tree-contacts", ("n3",))]
    both = plan(DrainObservation(OPERATOR, False, True, held=holding(RIVER), peers_draining=frozenset({"n2", "n3"})))
    assert both.state is DrainState.DRAINING and both.actions == ()


def test_unread_leaderships_keep_the_node_draining() -> None:
    p = plan(DrainObservation(OPERATOR, False, True, error="connection refused"))
    assert (p.state, p.actions) == (DrainState.DRAINING, ())
    assert "connection refused" in p.sentence


def test_a_sidecar_is_drained_once_its_forest_stopped() -> None:
    assert plan(DrainObservation(DrainReason.STOP, True, False)).actions == (DrainAction.PAUSE_WORK,)
    assert plan(DrainObservation(DrainReason.STOP, False, False)).state is DrainState.DRAINED


# --- a real standalone node -------------------------------------------------------------------


TOKEN = "drain-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    n = NodeProcess("standalone", tmp_path / "data", env={"NIMSFOREST_API_TOKEN": TOKEN})
    n.start()
    try:
        yield n
    finally:
        n.stop()


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nimsforest", *args, "--api", f"127.0.0.1:{node.api_port}"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NIMSFOREST_API_TOKEN": TOKEN})


def river(node: NodeProcess) -> httpx.Response:
    return httpx.post(f"{node.api_url}/api/v1/river/drain.test", json={"x": 1},
                      headers={"Idempotency-Key": "k1", **AUTH}, timeout=10)


def closes_after_answer(node: NodeProcess) -> bool:
    """Whether the node closes a kept-alive HTTP/1.1 connection after answering GET /health
    (the server's own doing: the request asks to keep it)."""
    with socket.create_connection(("127.0.0.1", node.api_port), timeout=5) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: node\r\nConnection: keep-alive\r\n\r\n")
        got = b""
        while b"\r\n\r\n" not in got:
            got += conn.recv(65536)
        head, _, body = got.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            body += conn.recv(65536)
        conn.settimeout(1.0)
        try:
            return conn.recv(1) == b""  # EOF: closed by the server
        except TimeoutError:
            return False  # still open, waiting for the next request


def audited(node: NodeProcess) -> list[tuple[str, bool, str | None, str | None]]:
    """(action, ok, refusal, name) of the node's drain and undrain audit records."""
    records = httpx.get(f"{node.api_url}/api/v1/audit?limit=50", headers=AUTH, timeout=10).json()
    return [(r["action"], r["ok"], r["refusal"], r["name"]) for r in records
            if r["action"] in ("drain", "undrain", "restart", "add")]


async def test_a_drained_node_refuses_input_stays_drained_across_a_restart_until_undrained(
    node: NodeProcess,
) -> None:
    await node.wait_healthy()
    assert river(node).status_code == 202
    assert not closes_after_answer(node)  # serving: connections are kept alive

    anonymous = httpx.post(f"{node.api_url}/api/v1/node/drain", timeout=10)
    assert anonymous.status_code == 401
    await eventually(lambda: audited(node) == [("drain", False, "unauthorized", None)],
                     what="the refused drain audited as a drain")

    other = cli(node, "drain", "n9")
    assert other.returncode == 2 and "is node 'n1', not 'n9'" in other.stderr

    done = cli(node, "drain", "--json")
    assert done.returncode == 0, done.stderr
    assert '"state": "drained"' in done.stdout
    await eventually(lambda: audited(node)[1:] == [("drain", True, None, "n1")],
                     what="the drain audited")
    code, body = node.health()
    assert code == 503 and body["status"] == "drained" and body["drain"]["state"] == "drained"
    assert body["forest"]["running"] is False
    refused = river(node)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.headers["nimsforest-draining"] == node.name
    assert "takes no new input" in refused.json()["error"]
    # drained: every answer closes its connection, so clients leave before a stop closes it
    assert refused.headers["connection"] == "close" and closes_after_answer(node)

    node.stop()
    node.start()
    await eventually(lambda: node.health()[1].get("drain", {}).get("state") == "drained",
                     timeout=60, what="the restarted node drained again")
    assert node.health()[1]["forest"]["running"] is False
    assert "kept drained" in node.log()

    back = cli(node, "undrain")
    assert back.returncode == 0, back.stderr
    body = await node.wait_healthy()
    assert body["status"] == "healthy" and body["drain"]["state"] == "serving"
    await eventually(lambda: node.health()[1]["forest"]["running"], what="the forest running again")
    again = river(node)
    assert again.status_code == 202 and again.json()["duplicate"] is True  # stored once, before
    assert not closes_after_answer(node)
    assert not (node.data_dir / "drained").exists()
    await eventually(lambda: audited(node)[-1] == ("undrain", True, None, "n1"),
                     what="the undrain audited")


def test_drain_says_in_one_sentence_when_no_daemon_answers(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "nimsforest", "drain", "nX", "--api", "127.0.0.1:1"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "No NimsForest daemon is running" in result.stderr


# --- the loop, with a real NATS for the announcements --------------------------------------


class Forestish:
    """The work a drain pauses: started and stopped, nothing else."""

    def __init__(self) -> None:
        self.running = True

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False


async def test_a_drain_is_heard_by_the_other_nodes_and_so_is_its_end(nc: nats.NATS, tmp_path: Path) -> None:
    a, b = (Drainer(name, tmp_path / name, None, nc=nc, interval=0.1) for name in ("a", "b"))
    work = Forestish()
    a.attach(work)
    b.attach(Forestish())
    async with asyncio.TaskGroup() as tasks:
        runs = [tasks.create_task(d.run()) for d in (a, b)]
        a.drain()
        await eventually(lambda: a.status().state is DrainState.DRAINED, what="a drained")
        assert not work.running and (tmp_path / "a" / "drained").exists()
        await eventually(lambda: b.peers_draining() == {"a"}, what="b hears a drain")
        assert Drainer("a", tmp_path / "a", None).wanted is DrainReason.OPERATOR  # kept
        a.undrain()
        await eventually(lambda: work.running and b.peers_draining() == frozenset(),
                         what="a serves again and b hears it")
        for run in runs:
            run.cancel()


# --- single-replica streams moved off a draining server (real routed servers) ---------------


async def test_a_drain_moves_a_single_replica_stream_to_the_other_node_losing_nothing(
    embedded: EmbeddedFactory, tmp_path: Path,
) -> None:
    one, two = await routed_servers(embedded, "d", count=2)
    c = one.credentials
    nc1 = await nats.connect(one.client_url, user=c.app_user, password=c.app_password)
    nc2 = await nats.connect(two.client_url, user=c.app_user, password=c.app_password)
    try:
        js = nc1.jetstream()
        await js.add_stream(StreamConfig(name="ONE", subjects=["one.>"], num_replicas=1,
                                         placement=Placement(tags=[NODE_TAG, "node:d1"])))
        sent = 300
        for i in range(sent):
            await js.publish("one.x", str(i).encode())
        assert (await js.stream_info("ONE")).cluster.leader == "d1"

        d1 = Drainer("d1", tmp_path / "d1", one, nc=nc1, interval=0.2)
        d2 = Drainer("d2", tmp_path / "d2", two, nc=nc2, interval=0.2)
        d1.attach(Forestish())
        d2.attach(Forestish())
        async with asyncio.TaskGroup() as tasks:
            runs = [tasks.create_task(d.run()) for d in (d1, d2)]
            d1.drain()
            await eventually(lambda: d1.status().state is DrainState.DRAINED, timeout=60,
                             what="d1 drained, its R1 stream moved")
            async def moved() -> bool:  # d2 leads it; d1's copy is let go right after
                info = await nc2.jetstream().stream_info("ONE")
                return info.cluster.leader == "d2" and not info.cluster.replicas

            await eventually(moved, timeout=30, what="ONE on d2 alone")
            info = await nc2.jetstream().stream_info("ONE")
            assert info.state.messages == sent
            got = [(await nc2.jetstream().get_msg("ONE", seq)).data for seq in range(1, sent + 1)]
            assert got == [str(i).encode() for i in range(sent)]

            # d2 is now the only node that serves: draining it too has nowhere to move ONE
            await eventually(lambda: d2.peers_draining() == {"d1"}, what="d2 hears d1 drained")
            d2.drain()
            await eventually(lambda: "no other serving node can take the single-replica "
                             "stream(s) ONE" in d2.status().sentence, timeout=30,
                             what="d2 says it cannot move ONE")
            assert d2.status().state is DrainState.DRAINING
            assert (await nc2.jetstream().stream_info("ONE")).state.messages == sent
            for run in runs:
                run.cancel()
    finally:
        await nc1.close()
        await nc2.close()


# --- restart through the API, under a supervisor that restarts on exit status 75 ---------------


class Supervisor:
    """What systemd does for the shipped unit: start the node again when it exits with a
    status in `restart_on` (None: any status, Restart=always), until `stop()`."""

    def __init__(self, node: NodeProcess, restart_on: frozenset[int] | None,
                 pidfile: Path | None = None) -> None:
        self.node, self.restart_on, self.pidfile = node, restart_on, pidfile
        self.exits: list[int] = []
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    def _start(self) -> None:
        self.node.start()
        if self.pidfile is not None and self.node.proc is not None:
            self.pidfile.write_text(f"{self.node.proc.pid}\n")

    async def __aenter__(self) -> Supervisor:
        self._start()
        self._task = asyncio.create_task(self._watch())
        return self

    async def _watch(self) -> None:
        while not self._stopping:
            proc = self.node.proc
            code = proc.poll() if proc is not None else None
            if code is not None:
                self.node.wait(1)  # reaped: its log closed
                self.exits.append(code)
                if self.restart_on is not None and code not in self.restart_on:
                    return
                self._start()
            await asyncio.sleep(0.05)

    async def __aexit__(self, *_exc: object) -> None:
        self._stopping = True
        if self._task is not None:
            await self._task
        running = self.node.proc is not None and self.node.proc.poll() is None
        code = self.node.stop()
        if running and code is not None:
            self.exits.append(code)


async def test_a_restart_through_the_api_exits_75_and_the_supervisor_starts_the_node_again(
    tmp_path: Path,
) -> None:
    node = NodeProcess("standalone", tmp_path / "data", env={"NIMSFOREST_API_TOKEN": TOKEN})
    async with Supervisor(node, frozenset({RESTART_EXIT_STATUS})) as supervisor:
        first = await node.wait_healthy()
        anonymous = httpx.post(f"{node.api_url}/api/v1/node/restart", timeout=10)
        assert anonymous.status_code == 401
        await api_restart(AUTH)(Target(node.name, node.api_url))  # what the CLI does without --command
        await eventually(lambda: supervisor.exits == [RESTART_EXIT_STATUS], timeout=30,
                         what="the node exited with 75")
        again = await node.wait_healthy()
        assert again["started_at"] != first["started_at"] and again["status"] == "healthy"
        assert "Restart asked through the API" in node.log()
        await eventually(lambda: [(a, ok, why) for a, ok, why, _ in audited(node) if a == "restart"]
                         == [("restart", False, "unauthorized"), ("restart", True, None)],
                         what="the refused and the accepted restart audited")
    assert supervisor.exits == [RESTART_EXIT_STATUS, 0]  # then stopped (SIGTERM): exit 0
