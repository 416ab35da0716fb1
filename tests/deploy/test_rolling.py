"""The rolling restart's decisions, on frozen observations."""

from __future__ import annotations

from nimsforest.deploy.rolling import (
    Begin,
    Limits,
    NodeSeen,
    Phase,
    Progress,
    StepKind,
    next_step,
    precheck,
    restart_order,
)
from nimsforest.drain import DrainState

SERVING, DRAINING, DRAINED = DrainState.SERVING, DrainState.DRAINING, DrainState.DRAINED
LIMITS = Limits(whole=30, drain=60, come_back=100, catch_up=100)


def fine(name: str, meta: str = "n2", **kw: object) -> NodeSeen:
    base: dict[str, object] = dict(reachable=True, started_at="t0", drain=SERVING, healthy=True,
                                   whole=True, meta_leader=meta)
    return NodeSeen(name, **{**base, **kw})  # type: ignore[arg-type]


def test_the_meta_leader_goes_last() -> None:
    assert restart_order([fine("n2"), fine("n1"), fine("n3")]) == ("n1", "n3", "n2")
    # --node: only some are restarted, the leader known from all of them
    assert restart_order([fine("n2"), fine("n1"), fine("n3")], frozenset({"n2", "n3"})) == ("n3", "n2")


def test_a_rolling_restart_begins_only_from_a_whole_cluster() -> None:
    assert precheck([fine("n1"), fine("n2"), fine("n3")]).kind is Begin.GO
    lagging = fine("n3", whole=False, reason="stream RIVER is not current")
    # not whole yet: looked at again, up to limits.whole, then refused with the reason
    wait = precheck([fine("n1"), fine("n2"), lagging], 1, LIMITS)
    assert wait.kind is Begin.WAIT and "n3: stream RIVER is not current" in wait.sentence
    gone = precheck([fine("n1"), fine("n2"), NodeSeen("n3", False, reason="refused")], 1, LIMITS)
    assert gone.kind is Begin.WAIT
    late = precheck([fine("n1"), fine("n2"), lagging], LIMITS.whole + 1, LIMITS)
    assert late.kind is Begin.REFUSE and "n3: stream RIVER is not current" in late.sentence
    # what waiting will not change is refused at once
    assert precheck([fine("n1")]).kind is Begin.REFUSE
    drained = precheck([fine("n1"), fine("n2", drain=DRAINED, healthy=False)], 0, LIMITS)
    assert drained.kind is Begin.REFUSE and "n2 drained" in drained.sentence


def test_one_node_walks_drain_restart_come_back_undrain_catch_up_then_the_next() -> None:
    p = Progress(("n1", "n2"), since=0)
    s = next_step(p, fine("n1"), 1, LIMITS)
    assert (s.kind, s.node) == (StepKind.DRAIN, "n1")
    s = next_step(s.progress, fine("n1", drain=DRAINING, healthy=False), 2, LIMITS)
    assert s.kind is StepKind.WAIT
    s = next_step(s.progress, fine("n1", drain=DRAINED, healthy=False), 3, LIMITS)
    assert s.kind is StepKind.RESTART and s.progress.phase is Phase.COME_BACK
    assert s.progress.started_before == "t0"
    # the old process still answers: not back yet
    s = next_step(s.progress, fine("n1", drain=DRAINED, healthy=False), 4, LIMITS)
    assert s.kind is StepKind.WAIT
    s = next_step(s.progress, NodeSeen("n1", False, reason="refused"), 5, LIMITS)
    assert s.kind is StepKind.WAIT
    back = fine("n1", started_at="t1", drain=DRAINED, healthy=False)
    s = next_step(s.progress, back, 6, LIMITS)
    assert s.kind is StepKind.UNDRAIN and s.progress.phase is Phase.CATCH_UP
    s = next_step(s.progress, fine("n1", started_at="t1", whole=False, reason="RIVER lagging"), 7, LIMITS)
    assert s.kind is StepKind.WAIT and "RIVER lagging" in s.sentence
    s = next_step(s.progress, fine("n1", started_at="t1"), 8, LIMITS)
    assert s.kind is StepKind.ADVANCE and s.progress.node == "n2" and s.progress.phase is Phase.DRAIN
    done = next_step(Progress(("n1", "n2"), index=2), fine("x"), 9, LIMITS)
    assert done.kind is StepKind.DONE


def test_it_stops_and_says_why_when_a_node_does_not_come_back() -> None:
    p = Progress(("n1", "n2"), phase=Phase.COME_BACK, since=0, started_before="t0")
    s = next_step(p, NodeSeen("n1", False, reason="its API does not answer (ConnectError)"), 101, LIMITS)
    assert s.kind is StepKind.STOP and "n1 did not come back within 100s" in s.sentence
    assert "ConnectError" in s.sentence


def test_it_stops_when_a_node_does_not_drain_or_does_not_catch_up() -> None:
    s = next_step(Progress(("n1",), since=0), fine("n1", drain=DRAINING, reason="handing over RIVER"),
                  61, LIMITS)
    assert s.kind is StepKind.STOP and "did not drain within 60s: handing over RIVER" in s.sentence
    p = Progress(("n1",), phase=Phase.CATCH_UP, since=0)
    s = next_step(p, fine("n1", whole=False, reason="peer n3 offline"), 101, LIMITS)
    assert s.kind is StepKind.STOP and "peer n3 offline" in s.sentence


def test_a_node_that_does_not_answer_once_is_waited_for_before_it_stops_the_restart() -> None:
    """A read of the node in turn that fails (a reset connection, a slow answer) is looked
    at again; a node that does not answer for `unreachable` seconds stops the restart."""
    limits = Limits(unreachable=10, drain=60, come_back=100, catch_up=100)
    p = Progress(("n1", "n2"), since=0)
    lost = NodeSeen("n1", False, reason="its API does not answer (ReadError)")
    s = next_step(p, lost, 3, limits)
    assert (s.kind, s.node) == (StepKind.WAIT, "n1") and "ReadError" in s.sentence
    s = next_step(s.progress, fine("n1"), 4, limits)
    assert s.kind is StepKind.DRAIN
    s = next_step(s.progress, lost, 11, limits)
    assert s.kind is StepKind.STOP and "does not answer before its restart" in s.sentence


def test_a_node_that_lost_its_undrain_is_undrained_again() -> None:
    p = Progress(("n1",), phase=Phase.CATCH_UP, since=0)
    assert next_step(p, fine("n1", drain=DRAINED), 1, LIMITS).kind is StepKind.UNDRAIN


def test_the_command_line_refuses_what_it_cannot_do_in_one_sentence() -> None:
    from click.testing import CliRunner

    from nimsforest.cli import main

    runner = CliRunner()
    base = ["cluster", "restart", "--registry-url", "http://127.0.0.1:1", "--command", "true"]
    no_rolling = runner.invoke(main, base)
    assert no_rolling.exit_code == 2 and "Only rolling restarts" in no_rolling.output
    bad = runner.invoke(main, [*base[:-1], "ssh {machine} restart", "--rolling"])
    assert bad.exit_code == 2 and "{node}, {host} and {api} only" in bad.output
