"""The cluster view, merged purely from frozen node reports: a component failing on one
node stands out from any node, an error clears once the component handled an event
after it, a silent node is said, counters add up, one node's view on request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nimsforest.control._cluster_view import Heard, cluster_view, error_state, node_view
from nimsforest.control._schemas import (
    ComponentOut,
    ComponentView,
    ControlOut,
    ErrorState,
    NodeReport,
    NodeResources,
    Scope,
    StatusOut,
)
from nimsforest.control._watcher import WatchState
from nimsforest.control.errors import NotFound
from nimsforest.forest import ComponentKind

NOW = 1_800_000_000.0
T0 = datetime.fromtimestamp(NOW, UTC)
TH, NIM = ComponentKind.TREEHOUSE, ComponentKind.NIM
RUNNING, FAILED = ComponentView.RUNNING, ComponentView.FAILED


def comp(name: str, state: ComponentView = RUNNING, kind: ComponentKind = TH, *, inn: int = 0,
         out: int = 0, errors: int = 0, error: str | None = None, error_ago: float = 0.0,
         ok_ago: float | None = None, node: str = "n1") -> ComponentOut:
    err_at = T0 - timedelta(seconds=error_ago) if error else None
    ok_at = T0 - timedelta(seconds=ok_ago) if ok_ago is not None else None
    return ComponentOut(kind=kind, name=name, state=state, events_in=inn, events_out=out,
                        errors=errors, last_error=error, last_error_at=err_at, last_ok_at=ok_at,
                        last_error_node=node if error else None,
                        error_state=error_state(state, error, err_at, ok_at))


def report(node: str, *comps: ComponentOut, zone: str | None = None, cpu: float = 1.0) -> NodeReport:
    healthy = all(c.state is RUNNING for c in comps)
    status = StatusOut(node=node, running=True, healthy=healthy, config_file=None,
                       control=ControlOut(state=WatchState.IN_STEP, sentence="in step",
                                          revision=7, cycles=1),
                       components=list(comps))
    return NodeReport(node=node, zone=zone, at=T0, interval=2.0,
                      resources=NodeResources(cpu_percent=cpu, memory_bytes=50 << 20), status=status)


def view(me: NodeReport, *heard: tuple[NodeReport, float], **kw) -> StatusOut:
    return cluster_view(me, [Heard(r, NOW - ago) for r, ago in heard], NOW, stale_after=6.0,
                        forget_after=600.0, **kw)


def test_the_error_rule() -> None:
    at = T0
    assert error_state(RUNNING, None, None, None) is None
    assert error_state(RUNNING, "boom", at, None) is ErrorState.CURRENT  # nothing since
    assert error_state(RUNNING, "boom", at, at - timedelta(seconds=1)) is ErrorState.CURRENT
    assert error_state(RUNNING, "boom", at, at + timedelta(seconds=1)) is ErrorState.CLEARED
    # a component that does not run keeps its error current, whatever it did before
    assert error_state(FAILED, "boom", at, at + timedelta(seconds=1)) is ErrorState.CURRENT
    assert error_state(ComponentView.NOT_APPLIED, "no key", None, None) is ErrorState.CURRENT


def test_a_component_failing_on_one_node_stands_out_from_any_node() -> None:
    n1 = report("n1", comp("scoring", inn=10, out=10), comp("qualify", kind=NIM, inn=4, out=4))
    n3 = report("n3", comp("scoring", FAILED, inn=2, errors=2, error="cannot start: boom",
                           error_ago=30, node="n3"),
                comp("qualify", kind=NIM, inn=3, out=3, node="n3"), zone="eu-2")
    n2 = report("n2", comp("scoring", inn=5, out=5, node="n2"), comp("qualify", kind=NIM, node="n2"))
    v = view(n1, (n2, 1.0), (n3, 1.5))
    assert v.scope is Scope.CLUSTER and v.node == "n1" and not v.healthy
    scoring = next(c for c in v.components if c.name == "scoring")
    assert scoring.state is FAILED  # the worst state of any reporting node
    assert (scoring.events_in, scoring.events_out, scoring.errors) == (17, 15, 2)
    assert scoring.last_error == "cannot start: boom" and scoring.last_error_node == "n3"
    assert scoring.error_state is ErrorState.CURRENT
    assert [(r.node, r.state) for r in scoring.nodes] == [("n1", RUNNING), ("n2", RUNNING),
                                                          ("n3", FAILED)]
    qualify = next(c for c in v.components if c.name == "qualify")
    assert qualify.state is RUNNING and qualify.events_in == 7 and qualify.last_error is None
    assert [c.kind for c in v.components] == [TH, NIM]  # the forest's order
    assert [(n.node, n.zone, n.not_running) for n in v.nodes] == [
        ("n1", None, 0), ("n2", None, 0), ("n3", "eu-2", 1)]
    # the same reports, answered by n3: the same figures
    other = view(n3, (n1, 0.5), (n2, 1.0))
    assert [c.model_dump(exclude={"nodes"}) for c in other.components] == [
        c.model_dump(exclude={"nodes"}) for c in v.components]


def test_a_cleared_error_is_not_current_and_a_current_one_wins() -> None:
    n1 = report("n1", comp("scoring", inn=9, out=8, errors=1, error="old trouble", error_ago=60,
                           ok_ago=10))
    v = view(n1)
    c = v.components[0]
    assert c.state is RUNNING and c.error_state is ErrorState.CLEARED
    assert c.last_error == "old trouble" and c.last_error_node == "n1" and v.healthy
    # an older error that still holds on n2 is shown before n1's newer, cleared one
    n2 = report("n2", comp("scoring", inn=1, errors=1, error="still failing", error_ago=120,
                           node="n2"))
    c = view(n1, (n2, 1.0)).components[0]
    assert (c.last_error, c.last_error_node, c.error_state) == (
        "still failing", "n2", ErrorState.CURRENT)
    # of two current errors, the newest
    n3 = report("n3", comp("scoring", inn=1, errors=1, error="newest", error_ago=5, node="n3"))
    assert view(n1, (n2, 1.0), (n3, 1.0)).components[0].last_error_node == "n3"


def test_a_silent_node_is_said_its_counts_kept_its_states_not() -> None:
    n1 = report("n1", comp("scoring", inn=10, out=10))
    n2 = report("n2", comp("scoring", FAILED, inn=3, out=3, error="x", node="n2"),
                comp("leftover", inn=1, node="n2"))
    v = view(n1, (n2, 30.0))  # heard 30 s ago, stale after 6
    assert [(n.node, n.reporting, n.age) for n in v.nodes] == [("n1", True, 0.0),
                                                              ("n2", False, 30.0)]
    assert not v.healthy  # a node does not report
    assert [c.name for c in v.components] == ["scoring"]  # only the silent node has "leftover"
    scoring = v.components[0]
    assert scoring.state is RUNNING and scoring.events_in == 13
    assert [(r.node, r.reporting) for r in scoring.nodes] == [("n1", True), ("n2", False)]
    # forgotten after forget_after; its own old report never replaces this node's live one
    assert [n.node for n in view(n1, (n2, 601.0)).nodes] == ["n1"]
    stale_me = report("n1", comp("scoring", FAILED))
    assert view(n1, (stale_me, 1.0)).components[0].state is RUNNING


def test_one_node_on_request_and_a_kind() -> None:
    n1 = report("n1", comp("scoring", inn=10, out=10), comp("qualify", kind=NIM))
    n2 = report("n2", comp("scoring", FAILED, error="boom", node="n2"), cpu=42.0)
    heard = [Heard(n2, NOW - 1)]
    v = node_view(n1, heard, NOW, "n2", stale_after=6, forget_after=600)
    assert v.scope is Scope.NODE and v.node == "n2"
    assert [(c.name, c.state) for c in v.components] == [("scoring", FAILED)]
    assert v.nodes[0].resources.cpu_percent == 42.0
    mine = node_view(n1, heard, NOW, "n1", stale_after=6, forget_after=600, kind=NIM)
    assert [c.name for c in mine.components] == ["qualify"]
    with pytest.raises(NotFound, match="No node named 'n9' reports its status .*n1, n2"):
        node_view(n1, heard, NOW, "n9", stale_after=6, forget_after=600)
    only = view(n1, (n2, 1.0), kind=NIM)
    assert [c.name for c in only.components] == ["qualify"]


def lagging(c: ComponentOut, pending: int, ago: float) -> ComponentOut:
    return c.model_copy(update=dict(consumer=f"treehouse-{c.name}", pending=pending,
                                    pending_at=T0 - timedelta(seconds=ago)))


def test_a_consumers_lag_is_the_freshest_reading_never_a_sum() -> None:
    # every node reads the one shared consumer: 40 read 5 s ago, 12 read 1 s ago, 30 read 3 s ago
    n1 = report("n1", lagging(comp("scoring"), 40, 5.0))
    n2 = report("n2", lagging(comp("scoring", node="n2"), 12, 1.0))
    n3 = report("n3", lagging(comp("scoring", node="n3"), 30, 3.0))
    scoring = view(n1, (n2, 1.0), (n3, 1.0)).components[0]
    assert scoring.pending == 12 and scoring.pending_at == T0 - timedelta(seconds=1)
    assert {r.node: r.pending for r in scoring.nodes} == {"n1": 40, "n2": 12, "n3": 30}
    # a silent node's reading loses to a reporting one's, however recent its clock says it is
    n2_silent = report("n2", lagging(comp("scoring", node="n2"), 99, 0.0))
    assert view(n1, (n2_silent, 60.0)).components[0].pending == 40
    # one node's view: its own reading
    assert node_view(n3, [Heard(n1, NOW)], NOW, "n1", stale_after=6.0,
                     forget_after=600.0).components[0].pending == 40


def test_no_reading_no_lag() -> None:
    v = view(report("n1", comp("scoring")), (report("n2", comp("scoring", node="n2")), 1.0))
    assert v.components[0].pending is None and v.components[0].pending_at is None


def test_with_lag_puts_a_reading_on_the_components_with_that_consumer() -> None:
    from nimsforest.control._cluster_view import with_lag

    a = comp("a").model_copy(update={"consumer": "treehouse-a"})
    b = comp("b").model_copy(update={"consumer": "treehouse-b"})
    src = comp("web", kind=ComponentKind.SOURCE)  # no consumer
    out = with_lag([a, b, src], {"treehouse-a": (7, NOW), "treehouse-z": (1, NOW)})
    assert [c.pending for c in out] == [7, None, None]
    assert out[0].pending_at == T0
    assert with_lag([a], {})[0].pending is None  # never read yet
