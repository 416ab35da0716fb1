"""Typed state of the forest: component kinds and states, and the frozen snapshots the
runtime hands out (`Forest.list()`, `Forest.status()`, `Forest.reload()`)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from nimsforest.forest.trace import TracingState, TracingStatus


class ComponentKind(StrEnum):
    SOURCE = "source"
    TREE = "tree"
    TREEHOUSE = "treehouse"
    NIM = "nim"
    OUTPUT = "output"  # the Go original's songbird: a leaf sent to the world
    DECOMPOSER = "decomposer"  # built in, one per forest; not added or removed by name

    @property
    def plural(self) -> str:
        return {"treehouse": "treehouses"}.get(self.value, self.value + "s")


class ComponentState(StrEnum):
    RUNNING = "running"
    FAILED = "failed"
    STOPPED = "stopped"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ComponentRef(_Frozen):
    kind: ComponentKind
    name: str

    def __str__(self) -> str:
        """The one way a component is named in sentences: `tree 'contacts'`."""
        return f"{self.kind.value} '{self.name}'"

    @property
    def token(self) -> str:
        """The one way a component is named in headers, span attributes and Lua chunk
        names: `tree:contacts`."""
        return f"{self.kind.value}:{self.name}"


def component_label(kind: ComponentKind, name: str) -> str:
    return str(ComponentRef(kind=kind, name=name))


class ComponentStatus(_Frozen):
    """One component as it is right now on this node."""

    kind: ComponentKind
    name: str
    state: ComponentState
    consumes: str | None = None  # the stream subject filter it consumes (None for sources)
    publishes: str | None = None  # the subject it emits on (a river subject for sources)
    consumer: str | None = None  # its durable JetStream consumer, shared by every node
    events_in: int = 0  # deliveries received (redeliveries count again)
    events_out: int = 0  # messages emitted and acknowledged by JetStream
    dropped: int = 0  # events the script or brain chose to drop (nil result)
    errors: int = 0  # failed attempts (each is retried until max_deliver)
    dead: int = 0  # events given up on (terminated after max_deliver, or malformed)
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_ok_at: datetime | None = None  # the last event it completed successfully
    started_at: datetime | None = None
    prompt_tokens: int = 0  # nims: tokens their brains' answers cost (as servers counted)
    completion_tokens: int = 0
    cost: float = 0.0  # nims: at their brains' prices per million tokens
    activity: str | None = None  # a source that runs: what it does now (one sentence)

    @property
    def ref(self) -> ComponentRef:
        return ComponentRef(kind=self.kind, name=self.name)


class ForestStatus(_Frozen):
    running: bool
    config_path: str | None
    components: tuple[ComponentStatus, ...]
    tracing: TracingStatus = TracingStatus(TracingState.OFF, "tracing is off")

    @property
    def healthy(self) -> bool:
        return self.running and all(c.state is ComponentState.RUNNING for c in self.components)

    @property
    def user_components(self) -> tuple[ComponentStatus, ...]:
        """The components of the forest's configuration (the decomposer is built in)."""
        return tuple(c for c in self.components if c.kind is not ComponentKind.DECOMPOSER)

    @property
    def failed(self) -> tuple[ComponentStatus, ...]:
        return tuple(c for c in self.components if c.state is ComponentState.FAILED)


class ReloadDiff(_Frozen):
    """What `Forest.reload()` did. `failed` lists components that were applied but did
    not start (they are present, in state FAILED)."""

    added: tuple[ComponentRef, ...] = ()
    removed: tuple[ComponentRef, ...] = ()
    changed: tuple[ComponentRef, ...] = ()
    unchanged: tuple[ComponentRef, ...] = ()
    failed: tuple[ComponentRef, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def summary(self) -> str:
        return (
            f"added {len(self.added)}, removed {len(self.removed)}, changed {len(self.changed)}, "
            f"unchanged {len(self.unchanged)}"
            + (f", failed to start {len(self.failed)}" if self.failed else "")
        )


class FlowReceipt(_Frozen):
    """An input accepted into the River (stored by JetStream)."""

    stream: str
    subject: str
    seq: int
    duplicate: bool = False
    trace_id: str | None = None  # `nimsforest trace ID` shows its way through the forest


__all__ = [
    "component_label",
    "ComponentKind",
    "ComponentRef",
    "ComponentState",
    "ComponentStatus",
    "FlowReceipt",
    "ForestStatus",
    "ReloadDiff",
]
