"""natsembed against real nats-server processes: start, restart, reload, stop, witness."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import subprocess
from pathlib import Path

import nats
import psutil
import pytest

from natsembed import (
    EmbeddedNats,
    MetaElection,
    MonitorClient,
    NotReady,
    ProcessState,
    ReloadRejected,
    RestartPolicy,
    ServerProcess,
    StartFailed,
    Timeouts,
    find_nats_server,
)
from nimsforest.streams import RIVER, ensure_stream
from tests.support import EmbeddedFactory, eventually, free_port


async def test_lone_node_serves_r1_streams_on_the_node_only(embedded: EmbeddedFactory) -> None:
    node = embedded("n1")
    await node.start()
    snap = node.snapshot()
    assert snap.node.state is ProcessState.READY
    assert snap.witness is not None and snap.witness.state is ProcessState.READY
    assert snap.witness_name and "-witness-" in snap.witness_name

    nc = await nats.connect(node.client_url)
    try:
        info = await ensure_stream(nc.jetstream(), RIVER, 1)
        assert info.cluster is not None and info.cluster.leader == "n1"
        await nc.jetstream().publish("river.test", b"x")
    finally:
        await nc.close()
    jsz = await node.monitor.jsz(streams=True)
    assert [s.name for s in jsz.stream_details()] == ["RIVER"]


async def test_generated_files_are_private(embedded: EmbeddedFactory) -> None:
    node = embedded("n1")
    await node.start()
    for name in ("credentials.json", "nats.conf"):
        mode = stat.S_IMODE((node.config.data_dir / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"


async def test_killed_child_is_restarted(embedded: EmbeddedFactory) -> None:
    node = embedded("n1")
    await node.start()
    old_pid = node.node.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    await eventually(
        lambda: node.node.state is ProcessState.READY and node.node.pid not in (None, old_pid),
        what="nats-server restarted",
    )
    assert node.node.snapshot().restarts == 1
    assert await node.wait_jetstream(20)


async def test_gives_up_after_too_many_restarts(embedded: EmbeddedFactory) -> None:
    node = embedded("n1", policy=RestartPolicy(max_restarts=1, window=300, backoff_initial=0.05))
    await node.start()
    for _ in range(2):
        await eventually(lambda: node.node.state is ProcessState.READY, what="ready")
        pid = node.node.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await eventually(lambda p=pid: node.node.pid != p, what="child gone")
    await eventually(lambda: node.node.state is ProcessState.FAILED, what="gave up")
    assert "exited with code" in (node.node.snapshot().last_error or "")


async def test_joiner_and_confirmed_route_reload(embedded: EmbeddedFactory) -> None:
    a = embedded("a")
    await a.start()
    b = embedded("b", witness=False, routes=(a.cluster_address,))
    await b.start()  # joins a's cluster: its meta group gets a leader through a
    assert b.witness_name is None

    before = (await a.monitor.varz()).config_digest
    assert await a.set_routes([b.cluster_address]) is True
    after = (await a.monitor.varz()).config_digest
    assert after != before
    assert a.routes == (b.cluster_address,)
    assert b.cluster_address in (node_conf := a.node.config_path.read_text()) and "nats-route://" in node_conf

    async def routed() -> bool:
        return "b" in (await a.monitor.routez()).remote_names

    await eventually(routed, what="a routed to b")
    assert await a.set_routes([b.cluster_address]) is False  # no change, no reload


async def test_rejected_reload_keeps_old_config(embedded: EmbeddedFactory) -> None:
    node = embedded("n1")
    await node.start()
    path = node.node.config_path
    old_text = path.read_text()
    digest = (await node.monitor.varz()).config_digest
    bad = old_text.replace('server_name: "n1"', 'server_name: "renamed"')  # not reloadable
    with pytest.raises(ReloadRejected, match="previous configuration keeps running"):
        await node.node.reload(bad)
    assert path.read_text() == old_text
    assert node.node.state is ProcessState.READY
    assert (await node.monitor.varz()).config_digest == digest
    assert await node.monitor.healthz(js_meta_only=True)


async def test_reload_needs_a_ready_server(embedded: EmbeddedFactory) -> None:
    node = embedded("n1")
    with pytest.raises(NotReady):
        await node.node.reload("server_name: x\n")


async def test_graceful_stop_goes_through_lame_duck(embedded: EmbeddedFactory) -> None:
    node = embedded("n1")
    await node.start()
    pid = node.node.pid
    await node.stop()
    assert node.node.state is ProcessState.STOPPED
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert any("lame duck" in line for line in node.node.recent_output())
    assert not (node.config.data_dir / "nats-server.pid").exists()


async def test_start_failure_is_one_sentence(embedded: EmbeddedFactory) -> None:
    node = embedded("n1")
    busy = node.config.client_port
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", busy))
        s.listen()
        with pytest.raises(StartFailed) as err:
            await node.start()
    msg = str(err.value)
    assert "exited during start" in msg and "address already in use" in msg
    assert node.node.pid is None
    assert node.snapshot().witness is None or node.snapshot().witness.pid is None  # type: ignore[union-attr]


async def test_stale_server_from_a_previous_run_is_stopped(embedded: EmbeddedFactory) -> None:
    first = embedded("n1")
    await first.start()
    await first.stop()
    # Simulate a supervisor that vanished without stopping its child (no PDEATHSIG, as on
    # other platforms): the child keeps running on our config, and its pid file stays.
    conf = first.node.config_path
    stale = subprocess.Popen([str(find_nats_server()), "-c", str(conf)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await eventually(lambda: first.monitor.healthz(js_enabled_only=True), what="stale server up")
        (first.config.data_dir / "nats-server.pid").write_text(f"{stale.pid}\n")
        second = EmbeddedNats(first.config)
        try:
            await second.start()
            assert stale.poll() is not None, "the stale nats-server is still running"
            assert second.node.pid not in (None, stale.pid)
        finally:
            await second.stop()
            await second.close()
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.wait()


async def test_witness_is_retired_when_a_peer_joins(embedded: EmbeddedFactory) -> None:
    a = embedded("a")
    await a.start()
    nc = await nats.connect(a.client_url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, RIVER, 1)
        for i in range(20):
            await js.publish("river.x", str(i).encode())
    finally:
        await nc.close()
    b = embedded("b", witness=False, routes=(a.cluster_address,))
    await b.start()
    await a.set_routes([b.cluster_address])
    witness_dir = a.config.data_dir / "witness"
    assert witness_dir.exists()

    assert await a.retire_witness() is True

    async def meta_is_a_and_b() -> bool:
        meta = (await a.monitor.jsz()).meta_cluster
        return meta is not None and meta.leader in ("a", "b") and set(meta.members) | {"a"} == {"a", "b"}

    await eventually(meta_is_a_and_b, what="meta group {a, b}")
    assert a.witness_name is None and not witness_dir.exists()
    assert "127.0.0.1:" + str(a.config.cluster_port) not in a.routes
    nc = await nats.connect(a.client_url)
    try:
        info = await nc.jetstream().stream_info("RIVER")
        assert info.state.messages == 20
    finally:
        await nc.close()


async def test_routes_need_the_shared_secret(embedded: EmbeddedFactory) -> None:
    a = embedded("a")
    await a.start()
    b = embedded(
        "b", witness=False, routes=(a.cluster_address,), cluster_secret="other",
        timeouts=Timeouts(start=3, lame_duck=1, interrupt=5),
    )
    with pytest.raises(StartFailed, match="no meta leader"):
        await b.start()
    assert "b" not in (await a.monitor.routez()).remote_names


async def test_meta_state_is_detected_after_a_first_boot(embedded: EmbeddedFactory) -> None:
    from natsembed import has_meta_state

    node = embedded("n1")
    assert not has_meta_state(node.config.data_dir)
    await node.start()
    await node.stop()
    assert has_meta_state(node.config.data_dir)


async def test_output_pipe_has_room_for_a_stalled_supervisor(embedded: EmbeddedFactory) -> None:
    import fcntl

    node = embedded("n1")
    await node.start()
    pid = node.node.pid
    with open(f"/proc/{pid}/fd/1", "wb") as pipe:  # the same pipe nats-server writes to
        size = fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ)
    assert size == int(Path("/proc/sys/fs/pipe-max-size").read_text())
    assert size > 65536


async def test_witness_never_picks_the_nodes_own_ports(
    embedded: EmbeddedFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the node runs, its configured ports are free: a witness that picked one of
    # them took the node's cluster port on a restart (nats-server then drops the route to
    # "itself" and JetStream refuses to start). Offer the witness exactly those ports first.
    import natsembed._net as net

    node = embedded("n1", reserved_ports=(free_port(),))
    own = [*node.own_ports(), node.monitor_port]
    monkeypatch.setattr(net, "_handed_out", {})  # as in a node given its ports on the command line
    real_sample = net.random.sample
    monkeypatch.setattr(
        net.random, "sample",
        lambda pool, k: [p for p in own if p in pool] + real_sample([p for p in pool if p not in own], k),
    )
    await node.start()
    w = node._witness
    assert w is not None
    assert not {w.cluster_port, w.monitor_port} & set(own)
    assert node.snapshot().witness is not None


async def test_a_witness_port_taken_meanwhile_is_picked_again(
    embedded: EmbeddedFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process binds the port picked for the witness before the witness does.
    import socket

    import natsembed._supervisor as sup

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    picks = iter([taken])
    real = sup.free_port
    monkeypatch.setattr(sup, "free_port", lambda host, avoid=(): next(picks, None) or real(host, avoid=avoid))
    try:
        node = embedded("n1")
        await node.start()
        w = node._witness
        assert w is not None and w.cluster_port != taken
        assert node.snapshot().witness.state is ProcessState.READY  # type: ignore[union-attr]
        nc = await nats.connect(node.client_url)
        try:
            await ensure_stream(nc.jetstream(), RIVER, 1)
        finally:
            await nc.close()
    finally:
        squatter.close()


async def test_a_witness_removed_by_its_node_is_not_logged_as_an_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # what nats-server prints when its node retires it (peer-remove), fed through the
    # output drain of a witness and of a node's own server
    line = b"[42] 2026/12/01 23:00:00.000000 [ERR] JetStream being DISABLED, our server was removed from the cluster\n"
    for name, expected in (("n1-witness-1", True), ("n1", False)):
        proc = ServerProcess(name=name, binary=tmp_path / "nats-server", config_path=tmp_path / "c.conf",
                             monitor=MonitorClient("http://127.0.0.1:1"), pid_file=tmp_path / "p",
                             removal_expected=expected)
        reader = asyncio.StreamReader()
        reader.feed_data(line)
        reader.feed_eof()
        with caplog.at_level(logging.DEBUG, logger=f"nats-server.{name}"):
            await proc._drain_lines(reader)  # noqa: SLF001 - the drain is the unit here
    levels = {r.name: r.levelno for r in caplog.records if "removed from the cluster" in r.getMessage()}
    assert levels == {"nats-server.n1-witness-1": logging.INFO, "nats-server.n1": logging.ERROR}


async def test_a_first_election_that_does_not_conclude_starts_the_fresh_pair_again(
    embedded: EmbeddedFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A lost first vote makes raft wait 4-9 s for the next election; a first boot starts
    both servers again on empty stores instead. (Forced here with a zero allowance: each
    watched election counts as lost, then the start timeout applies as always.)"""
    node = embedded("n1", timeouts=Timeouts(start=20, lame_duck=3, interrupt=5, first_election=0.0))
    with caplog.at_level(logging.INFO, logger="natsembed"):
        await node.start()
    restarts = [r for r in caplog.records if "did not conclude" in r.getMessage()]
    assert len(restarts) == 3
    assert "starting both again on empty stores" in restarts[0].getMessage()
    assert await node.monitor.healthz(js_meta_only=True)
    nc = await nats.connect(node.client_url)
    try:
        info = await ensure_stream(nc.jetstream(), RIVER, 1)
        assert info.cluster is not None and info.cluster.leader == "n1"
    finally:
        await nc.close()


async def test_a_restarted_node_is_not_restarted_for_its_election(
    embedded: EmbeddedFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Only a first boot may be started again: a node with a log keeps its store."""
    node = embedded("n1")
    await node.start()
    await node.stop()
    again = embedded("n1", data_dir=node.config.data_dir, client_port=node.config.client_port,
                     cluster_port=node.config.cluster_port, monitor_port=node.config.monitor_port,
                     timeouts=Timeouts(start=20, lame_duck=3, interrupt=5, first_election=0.0))
    with caplog.at_level(logging.INFO, logger="natsembed"):
        await again.start()
    assert not [r for r in caplog.records if "did not conclude" in r.getMessage()]


async def _river_count(node: EmbeddedNats, durable: str) -> int:
    """RIVER's messages, once a consumer is made on it: start() returns when the meta leader
    answers (a consumer create waits for it), not only when /healthz says there is one."""
    nc = await nats.connect(node.client_url)
    try:
        js = nc.jetstream()
        await js.add_consumer(RIVER.name, durable_name=durable)
        info = await js.stream_info(RIVER.name)
        assert info.cluster is not None and info.cluster.leader == node.name
        return info.state.messages
    finally:
        await nc.close()


async def test_a_lone_node_restarted_on_its_data_elects_when_asked_and_keeps_its_data(
    embedded: EmbeddedFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Restarted on their logs, a node and its witness only recover their meta group, and
    raft would wait its election timeout (4-9 s); both are asked to elect at once instead
    (META.RESCUE at the unchanged quorum of 2). After a graceful stop and after both
    servers were killed -9, the pair elects through that prompt and the stream is whole."""
    node = embedded("n1")
    await node.start()
    assert node.election is MetaElection.FIRST or node.election is MetaElection.FIRST_AGAIN
    nc = await nats.connect(node.client_url)
    try:
        await ensure_stream(nc.jetstream(), RIVER, 1)
        for i in range(3):
            await nc.jetstream().publish("river.test", str(i).encode())
    finally:
        await nc.close()
    await node.stop()
    same = {"data_dir": node.config.data_dir, "client_port": node.config.client_port,
            "cluster_port": node.config.cluster_port, "monitor_port": node.config.monitor_port}

    # a graceful stop (lame duck, SIGINT), then a start on the same data directory
    never_restarted = RestartPolicy(max_restarts=0)
    again = embedded("n1", policy=never_restarted, **same)
    with caplog.at_level(logging.DEBUG, logger="natsembed"), caplog.at_level(logging.DEBUG, logger="nats-server"):
        await again.start()
    assert again.election is MetaElection.PROMPTED
    assert again.snapshot().election is MetaElection.PROMPTED
    asked = [r.getMessage() for r in caplog.records if "asking both to elect one now" in r.getMessage()]
    assert len(asked) == 1 and "at the unchanged quorum of 2" in asked[0]
    # nats-server's "Unsafe quorum rescue applied, quorum lowered 2 -> 2": not a warning here
    assert [r for r in caplog.records if "quorum rescue" in r.getMessage()]
    assert not [r for r in caplog.records if "quorum rescue" in r.getMessage() and r.levelno >= logging.WARNING]
    assert await _river_count(again, "after-stop") == 3

    # both servers killed -9 (nothing restarts them), then a start on the same directory
    pids = [again.node.pid, again.snapshot().witness.pid if again.snapshot().witness else None]
    assert all(pids)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
    await eventually(lambda: again.node.state is ProcessState.FAILED, what="the node's server dead")
    await again.stop()
    third = embedded("n1", **same)
    await third.start()
    assert third.election is MetaElection.PROMPTED
    assert await _river_count(third, "after-kill") == 3
