"""Frozen snapshots `grow` works on, and the JSON report it prints (schema nimsforest.grow/v1).

One run: targets (where to look) -> ForestSnapshot (what every node's NATS said) ->
Decision (pure) -> Action (what was done) -> GrowReport (text or JSON).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA = "nimsforest.grow/v1"


class Source(enum.Enum):
    REGISTRY = "registry"
    NODES = "nodes"


@dataclass(frozen=True)
class ForestRef:
    """Which forest: its registry (and service), or a list of monitoring URLs."""

    id: str  # the key under which cooldown and limits are remembered
    source: Source
    registry_url: str | None = None
    service: str | None = None


@dataclass(frozen=True)
class NodeTarget:
    """One node to look at."""

    name: str  # registry name, or the URL's host:port until /varz names it
    monitor_url: str | None
    cluster_address: str | None = None
    ram_bytes: int | None = None  # the machine's RAM, from registry metadata
    cpus: int | None = None  # the machine's CPU count, from registry metadata


@dataclass(frozen=True)
class NodeSample:
    """What one node's nats-server said (or that it did not answer)."""

    target: NodeTarget
    name: str
    reachable: bool
    healthy: bool = False
    error: str | None = None
    cpu_process_percent: float | None = None  # as nats-server reports it: 100 = one core
    memory_bytes: int | None = None
    connections: int | None = None
    in_msgs: int | None = None
    out_msgs: int | None = None
    in_bytes: int | None = None
    out_bytes: int | None = None
    jetstream_storage_bytes: int | None = None
    jetstream_memory_bytes: int | None = None
    streams: int | None = None
    version: str | None = None

    @property
    def cpu_percent(self) -> float | None:
        """Share of the machine's CPU: nats-server's figure over the CPU count, when known."""
        if self.cpu_process_percent is None:
            return None
        cpus = self.target.cpus
        return self.cpu_process_percent / cpus if cpus else self.cpu_process_percent

    @property
    def memory_percent(self) -> float | None:
        """nats-server's memory as a share of the machine's RAM; None when the RAM is unknown."""
        if self.memory_bytes is None or not self.target.ram_bytes:
            return None
        return 100.0 * self.memory_bytes / self.target.ram_bytes


@dataclass(frozen=True)
class ForestSnapshot:
    forest: ForestRef
    measured_at: datetime
    nodes: tuple[NodeSample, ...]

    @property
    def reachable(self) -> tuple[NodeSample, ...]:
        return tuple(n for n in self.nodes if n.reachable)

    def total(self, attribute: str) -> int:
        return sum(getattr(n, attribute) or 0 for n in self.reachable)


def pct(value: float) -> str:
    """A percentage as grow writes it, in its sentences and its tables: 85%, 7.5%."""
    return f"{value:.0f}%" if value >= 10 else f"{value:.1f}%"


@dataclass(frozen=True)
class Policy:
    threshold: float = 80.0  # percent, CPU or memory, on any node
    max_nodes: int = 10
    cooldown: float = 900.0  # seconds between expansions


class Verdict(enum.Enum):
    WITHIN = "within_limits"  # nothing above the threshold
    GROW = "grow"  # add a node
    BLOCKED = "blocked"  # a node is due, but max_nodes or the cooldown forbid it now
    UNKNOWN = "unknown"  # no node answered


class Block(enum.Enum):
    COOLDOWN = "cooldown"
    MAX_NODES = "max_nodes"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    suggestion: int  # nodes to add (0 or 1)
    sentence: str
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    blocked_by: tuple[Block, ...] = ()
    hot: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node -> ("cpu", "memory")
    next_expansion_at: datetime | None = None


class ActionStatus(enum.Enum):
    NONE = "none"  # nothing to do
    BLOCKED = "blocked"  # due, forbidden by a limit
    DECLINED = "declined"  # the operator said no (or there was no terminal to ask)
    DRY_RUN = "dry_run"  # would have provisioned
    PROVISIONED = "provisioned"
    FAILED = "failed"


@dataclass(frozen=True)
class Action:
    mode: Literal["auto", "interactive", "dry-run"]
    status: ActionStatus
    provisioner: str | None = None
    node: str | None = None
    detail: str | None = None


# --- the JSON report: documented in docs/GROW.md, a test keeps them identical -------------------

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class ForestDoc(BaseModel):
    model_config = _FROZEN
    id: str = Field(description="Key of this forest in the state file (cooldown, limits).")
    source: Literal["registry", "nodes"]
    registry_url: str | None
    service: str | None


class NodeDoc(BaseModel):
    model_config = _FROZEN
    name: str
    monitor_url: str | None
    reachable: bool
    healthy: bool = Field(description="/varz answered and /healthz said ok.")
    error: str | None = Field(description="Why the node is unreachable or unhealthy.")
    cpu_percent: float | None = Field(description="Share of the machine's CPU (nats-server's CPU / cpus); "
                                                  "the process figure when cpus is unknown.")
    cpu_process_percent: float | None = Field(description="nats-server's CPU as it reports it (100 = one core).")
    cpus: int | None
    memory_bytes: int | None = Field(description="nats-server's resident memory.")
    memory_percent: float | None = Field(description="memory_bytes / ram_bytes; null when the RAM is unknown.")
    ram_bytes: int | None = Field(description="The machine's RAM, from the registry's node metadata.")
    connections: int | None
    in_msgs: int | None
    out_msgs: int | None
    in_bytes: int | None
    out_bytes: int | None
    jetstream_storage_bytes: int | None
    jetstream_memory_bytes: int | None
    streams: int | None
    over_threshold: list[Literal["cpu", "memory"]]


class SummaryDoc(BaseModel):
    model_config = _FROZEN
    nodes_total: int
    nodes_reachable: int
    nodes_healthy: int
    connections: int
    in_msgs: int
    out_msgs: int
    in_bytes: int
    out_bytes: int
    jetstream_storage_bytes: int
    cpu_max_percent: float | None
    cpu_max_node: str | None
    memory_max_percent: float | None
    memory_max_node: str | None


class LimitsDoc(BaseModel):
    model_config = _FROZEN
    threshold: float
    max_nodes: int
    cooldown_seconds: float
    last_expansion_at: datetime | None
    next_expansion_at: datetime | None = Field(description="Set while the cooldown forbids an expansion.")


class DecisionDoc(BaseModel):
    model_config = _FROZEN
    verdict: Literal["within_limits", "grow", "blocked", "unknown"]
    suggestion: int = Field(ge=0, description="Nodes to add.")
    blocked_by: list[Literal["cooldown", "max_nodes"]]
    warnings: list[str]
    notes: list[str]
    sentence: str


class ActionDoc(BaseModel):
    model_config = _FROZEN
    mode: Literal["auto", "interactive", "dry-run"]
    status: Literal["none", "blocked", "declined", "dry_run", "provisioned", "failed"]
    provisioner: str | None
    node: str | None
    detail: str | None


class GrowReport(BaseModel):
    """What `nimsforest grow --json` prints: one object, after any action was taken."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True,
                              json_schema_extra={"$id": SCHEMA, "title": "nimsforest grow --json"})
    schema_version: Literal["nimsforest.grow/v1"] = Field("nimsforest.grow/v1", alias="schema")
    forest: ForestDoc
    measured_at: datetime
    summary: SummaryDoc
    nodes: list[NodeDoc]
    limits: LimitsDoc
    decision: DecisionDoc
    action: ActionDoc

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=2)


def json_schema() -> dict:
    return GrowReport.model_json_schema(by_alias=True)
