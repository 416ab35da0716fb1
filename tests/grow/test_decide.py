"""The decision is pure: snapshots in, one Decision out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nimsforest.grow.decide import decide, human_duration
from nimsforest.grow.model import (
    Block,
    ForestRef,
    ForestSnapshot,
    NodeSample,
    NodeTarget,
    Policy,
    Source,
    Verdict,
)
from nimsforest.grow.run import GrowOptions, next_node_name, policy_for
from nimsforest.grow.state import Expansion, ForestState

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
GB = 1 << 30


def node(name: str, cpu: float | None = 10.0, mem: int | None = GB, *, ram: int | None = 8 * GB,
         cpus: int | None = 1, reachable: bool = True) -> NodeSample:
    target = NodeTarget(name=name, monitor_url=f"http://{name}:8222", cluster_address=f"{name}:6222",
                        ram_bytes=ram, cpus=cpus)
    if not reachable:
        return NodeSample(target, name, reachable=False, error="unreachable: connection refused")
    return NodeSample(target, name, reachable=True, healthy=True, cpu_process_percent=cpu, memory_bytes=mem,
                      connections=3, in_msgs=10, out_msgs=20)


def snap(*nodes: NodeSample) -> ForestSnapshot:
    return ForestSnapshot(ForestRef("f", Source.REGISTRY, "http://r:8500", "nimsforest"), NOW, nodes)


def test_within_limits() -> None:
    d = decide(snap(node("n1"), node("n2")), Policy(), None, NOW)
    assert d.verdict is Verdict.WITHIN and d.suggestion == 0 and not d.warnings


def test_cpu_on_one_node_suggests_one_node() -> None:
    d = decide(snap(node("n1", cpu=95), node("n2")), Policy(threshold=80), None, NOW)
    assert d.verdict is Verdict.GROW and d.suggestion == 1
    assert d.hot == {"n1": ("cpu",)} and d.warnings == ("CPU above 80% on n1 (95%)",)
    assert d.sentence == "Add 1 node: CPU above 80% on n1 (95%)."


def test_memory_is_a_share_of_the_machine() -> None:
    d = decide(snap(node("n1", mem=7 * GB, ram=8 * GB)), Policy(threshold=80), None, NOW)
    assert d.verdict is Verdict.GROW and d.hot == {"n1": ("memory",)}
    assert d.warnings == ("Memory above 80% on n1 (88%)",)


def test_memory_without_known_ram_is_not_compared_and_said_so() -> None:
    d = decide(snap(node("n1", mem=100 * GB, ram=None)), Policy(threshold=80), None, NOW)
    assert d.verdict is Verdict.WITHIN
    assert d.notes and "n1" in d.notes[0] and "RAM is unknown" in d.notes[0]


def test_cpu_is_shared_over_the_machines_cpus() -> None:
    # 150% of one core on a 4-CPU machine is 37.5% of the machine.
    assert node("n1", cpu=150, cpus=4).cpu_percent == 37.5
    assert decide(snap(node("n1", cpu=150, cpus=4)), Policy(threshold=80), None, NOW).verdict is Verdict.WITHIN
    assert decide(snap(node("n1", cpu=150, cpus=None)), Policy(threshold=80), None, NOW).verdict is Verdict.GROW


def test_the_threshold_is_strictly_above() -> None:
    assert decide(snap(node("n1", cpu=80)), Policy(threshold=80), None, NOW).verdict is Verdict.WITHIN
    assert decide(snap(node("n1", cpu=80.5)), Policy(threshold=80), None, NOW).verdict is Verdict.GROW


def test_unreachable_nodes_are_no_reason_to_grow_but_count_for_max_nodes() -> None:
    s = snap(node("n1"), node("n2", reachable=False))
    assert decide(s, Policy(), None, NOW).verdict is Verdict.WITHIN
    hot = snap(node("n1", cpu=99), node("n2", reachable=False))
    d = decide(hot, Policy(max_nodes=2), None, NOW)
    assert d.verdict is Verdict.BLOCKED and d.blocked_by == (Block.MAX_NODES,)
    assert "the forest has 2 node(s) and max_nodes is 2" in d.sentence


def test_no_node_answered() -> None:
    d = decide(snap(node("n1", reachable=False)), Policy(), None, NOW)
    assert d.verdict is Verdict.UNKNOWN and d.suggestion == 0


def test_cooldown() -> None:
    hot = snap(node("n1", cpu=99))
    recent = NOW - timedelta(minutes=5)
    d = decide(hot, Policy(cooldown=900), recent, NOW)
    assert d.verdict is Verdict.BLOCKED and d.blocked_by == (Block.COOLDOWN,)
    assert d.next_expansion_at == recent + timedelta(minutes=15)
    assert "the last expansion was 5m ago and the cooldown is 15m (next possible in 10m)" in d.sentence
    assert decide(hot, Policy(cooldown=900), NOW - timedelta(minutes=16), NOW).verdict is Verdict.GROW
    assert decide(hot, Policy(cooldown=0), NOW, NOW).verdict is Verdict.GROW


def test_both_limits_are_reported() -> None:
    d = decide(snap(node("n1", cpu=99)), Policy(max_nodes=1, cooldown=900), NOW, NOW)
    assert set(d.blocked_by) == {Block.MAX_NODES, Block.COOLDOWN}


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["n1", "n2"], "n3"),
        (["node-1", "node-7"], "node-8"),
        (["web", "db"], "node-3"),
        (["a1", "b1", "b2"], "b3"),
        ([], "node-1"),
        (["NDRVDREMXXNIOKFO7CLEIRF5OABEIVOGDNS5RG5ZGIXOVLQGEHGB6LV6"], "node-2"),  # a server id, not a name
    ],
)
def test_next_node_name(names: list[str], expected: str) -> None:
    assert next_node_name(names) == expected


def test_limits_flag_over_remembered_over_default() -> None:
    remembered = ForestState(max_nodes=4, cooldown_seconds=60)
    assert policy_for(GrowOptions(registry_url="http://r"), ForestState()) == Policy(80, 10, 900)
    assert policy_for(GrowOptions(registry_url="http://r"), remembered) == Policy(80, 4, 60)
    assert policy_for(GrowOptions(registry_url="http://r", max_nodes=7, cooldown=0), remembered) == Policy(80, 7, 0)


def test_last_expansion_is_the_latest() -> None:
    e = lambda minutes: Expansion(at=NOW - timedelta(minutes=minutes), node="x", provisioner="local",  # noqa: E731
                                  ok=True, detail=".")
    assert ForestState(expansions=(e(30), e(5), e(60))).last_expansion_at == NOW - timedelta(minutes=5)


def test_human_duration() -> None:
    assert [human_duration(s) for s in (5, 65, 900, 3700)] == ["5s", "1m5s", "15m", "1h1m"]
