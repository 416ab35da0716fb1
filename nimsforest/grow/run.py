"""One `grow` run: find the nodes, read them, decide, (maybe) provision, report.

    assessment = await assess(options, state)        # collect + decide, no side effects
    result = await expand(request_for(options, assessment), provisioner)
    report = build_report(assessment, action)

The CLI (nimsforest.cli.grow) asks the operator between `assess` and `expand`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from nimsforest.grow.collect import (
    GrowError,
    collect,
    forest_from_registry,
    forest_from_urls,
    targets_from_registry,
    targets_from_urls,
)
from nimsforest.grow.decide import decide
from nimsforest.grow.model import (
    Action,
    ActionDoc,
    Decision,
    DecisionDoc,
    ForestDoc,
    ForestRef,
    ForestSnapshot,
    GrowReport,
    LimitsDoc,
    NodeDoc,
    NodeSample,
    Policy,
    SummaryDoc,
)
from nimsforest.grow.provisioners import Provisioner, ProvisionRequest, ProvisionResult
from nimsforest.grow.state import ForestState, GrowState

Mode = Literal["auto", "interactive", "dry-run"]


@dataclass(frozen=True, repr=False)
class GrowOptions:
    registry_url: str | None
    registry_service: str = "nimsforest"
    registry_token: str | None = None
    nodes: tuple[str, ...] = ()  # monitoring URLs; when given, the registry is not asked for nodes
    threshold: float = 80.0
    max_nodes: int | None = None  # None: remembered value, else Policy's default
    cooldown: float | None = None  # None: remembered value, else Policy's default
    state_path: Path = field(default_factory=lambda: Path("grow.json"))
    provisioner: str = "local"
    node_name: str | None = None
    package: str = "nimsforest"
    cluster_secret: str | None = None
    timeout: float = 5.0  # per node, for its monitoring endpoints
    provision_timeout: float = 600.0
    mode: Mode = "interactive"

    def __repr__(self) -> str:
        return f"GrowOptions(registry_url={self.registry_url!r}, nodes={self.nodes!r}, mode={self.mode!r})"

    @property
    def forest(self) -> ForestRef:
        if self.nodes:
            return forest_from_urls(list(self.nodes))
        if not self.registry_url:
            raise GrowError("Say where the forest is: --registry-url (or REGISTRY_URL), or --nodes URL,URL.")
        return forest_from_registry(self.registry_url, self.registry_service)


@dataclass(frozen=True)
class Assessment:
    snapshot: ForestSnapshot
    policy: Policy
    forest_state: ForestState
    decision: Decision
    new_node: str  # the name an added node would get


def policy_for(options: GrowOptions, remembered: ForestState) -> Policy:
    """Flag or environment > the value remembered for this forest > the default."""
    max_nodes = options.max_nodes if options.max_nodes is not None else remembered.max_nodes
    cooldown = options.cooldown if options.cooldown is not None else remembered.cooldown_seconds
    default = Policy()
    return Policy(threshold=options.threshold,
                  max_nodes=default.max_nodes if max_nodes is None else max_nodes,
                  cooldown=default.cooldown if cooldown is None else cooldown)


_NUMBERED = re.compile(r"^(.*?)(\d+)$")
_SERVER_ID = re.compile(r"^N[A-Z2-7]{55}$")  # a nats-server without server_name shows its id


def next_node_name(existing: list[str]) -> str:
    """n1, n2 -> n3; node-7 -> node-8; otherwise node-<count + 1>, never an existing name."""
    taken = set(existing)
    groups: dict[str, int] = {}
    members: dict[str, int] = {}
    for name in existing:
        m = _NUMBERED.match(name) if not _SERVER_ID.match(name) else None
        if m:
            groups[m.group(1)] = max(groups.get(m.group(1), 0), int(m.group(2)))
            members[m.group(1)] = members.get(m.group(1), 0) + 1
    if groups:
        prefix = sorted(groups, key=lambda p: (-members[p], p))[0]
        number = groups[prefix] + 1
    else:
        prefix, number = "node-", len(existing) + 1
    while f"{prefix}{number}" in taken:
        number += 1
    return f"{prefix}{number}"


async def assess(options: GrowOptions, state: GrowState, now: datetime | None = None) -> Assessment:
    forest = options.forest
    if options.nodes:
        targets = targets_from_urls(list(options.nodes))
    else:
        assert options.registry_url is not None
        targets = await targets_from_registry(options.registry_url, options.registry_service,
                                              options.registry_token, timeout=max(options.timeout, 5.0))
        if not targets:
            raise GrowError(f"The registry at {options.registry_url} has no node of service "
                            f"'{options.registry_service}'.")
    snapshot = await collect(forest, targets, options.timeout)
    remembered = state.forest(forest.id)
    policy = policy_for(options, remembered)
    decision = decide(snapshot, policy, remembered.last_expansion_at, now or datetime.now(UTC))
    new_node = options.node_name or next_node_name([n.name for n in snapshot.nodes])
    return Assessment(snapshot, policy, remembered, decision, new_node)


def request_for(options: GrowOptions, assessment: Assessment) -> ProvisionRequest:
    return ProvisionRequest(
        node_name=assessment.new_node,
        registry_url=options.registry_url,
        registry_service=options.registry_service,
        existing=tuple(n.target for n in assessment.snapshot.nodes),
        workdir=options.state_path.parent,
        timeout=options.provision_timeout,
        cluster_secret=options.cluster_secret,
        registry_token=options.registry_token,
        package=options.package,
    )


async def expand(request: ProvisionRequest, provisioner: Provisioner) -> ProvisionResult:
    """Provision what `request` asks for; a provisioner's exception is a failed result."""
    try:
        return await provisioner.provision(request)
    except Exception as exc:  # noqa: BLE001 - a plugin's bug is a failed expansion, said in one sentence
        return ProvisionResult(False, request.node_name,
                               f"The {provisioner.name} provisioner raised {type(exc).__name__}: {exc}.")


# --- the report ------------------------------------------------------------------------------


def _node_doc(n: NodeSample, decision: Decision) -> NodeDoc:
    t = n.target
    return NodeDoc(
        name=n.name, monitor_url=t.monitor_url, reachable=n.reachable, healthy=n.healthy, error=n.error,
        cpu_percent=_round(n.cpu_percent), cpu_process_percent=_round(n.cpu_process_percent), cpus=t.cpus,
        memory_bytes=n.memory_bytes, memory_percent=_round(n.memory_percent), ram_bytes=t.ram_bytes,
        connections=n.connections, in_msgs=n.in_msgs, out_msgs=n.out_msgs, in_bytes=n.in_bytes,
        out_bytes=n.out_bytes, jetstream_storage_bytes=n.jetstream_storage_bytes,
        jetstream_memory_bytes=n.jetstream_memory_bytes, streams=n.streams,
        over_threshold=list(decision.hot.get(n.name, ())),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _busiest(nodes: tuple[NodeSample, ...], attr: str) -> tuple[float | None, str | None]:
    known = [(getattr(n, attr), n.name) for n in nodes if getattr(n, attr) is not None]
    if not known:
        return None, None
    value, name = max(known, key=lambda pair: pair[0])
    return _round(value), name


def build_report(assessment: Assessment, action: Action) -> GrowReport:
    snap, decision, policy = assessment.snapshot, assessment.decision, assessment.policy
    f = snap.forest
    cpu, cpu_node = _busiest(snap.reachable, "cpu_percent")
    mem, mem_node = _busiest(snap.reachable, "memory_percent")
    return GrowReport(
        forest=ForestDoc(id=f.id, source=f.source.value, registry_url=f.registry_url, service=f.service),
        measured_at=snap.measured_at,
        summary=SummaryDoc(
            nodes_total=len(snap.nodes), nodes_reachable=len(snap.reachable),
            nodes_healthy=sum(1 for n in snap.nodes if n.healthy), connections=snap.total("connections"),
            in_msgs=snap.total("in_msgs"), out_msgs=snap.total("out_msgs"), in_bytes=snap.total("in_bytes"),
            out_bytes=snap.total("out_bytes"), jetstream_storage_bytes=snap.total("jetstream_storage_bytes"),
            cpu_max_percent=cpu, cpu_max_node=cpu_node, memory_max_percent=mem, memory_max_node=mem_node,
        ),
        nodes=[_node_doc(n, decision) for n in snap.nodes],
        limits=LimitsDoc(threshold=policy.threshold, max_nodes=policy.max_nodes, cooldown_seconds=policy.cooldown,
                         last_expansion_at=assessment.forest_state.last_expansion_at,
                         next_expansion_at=decision.next_expansion_at),
        decision=DecisionDoc(verdict=decision.verdict.value, suggestion=decision.suggestion,
                             blocked_by=[b.value for b in decision.blocked_by], warnings=list(decision.warnings),
                             notes=list(decision.notes), sentence=decision.sentence),
        action=ActionDoc(mode=action.mode, status=action.status.value, provisioner=action.provisioner,
                         node=action.node, detail=action.detail),
    )


__all__ = ["Assessment", "GrowOptions", "assess", "build_report", "expand", "next_node_name", "policy_for",
           "request_for"]
