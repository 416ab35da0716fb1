"""The JSON documents of the control plane (HTTP bodies and NATS payloads alike): typed
requests per kind, and the answers. Their schemas are the OpenAPI schema."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from nimsforest.control._audit import Action, AuditRecord
from nimsforest.control._desired import Origin
from nimsforest.control._watcher import WatchState
from nimsforest.control.errors import Invalid, NotFound
from nimsforest.forest import (
    MAX_TEXT,
    NAME_PATTERN,
    SPEC_TYPES,
    ComponentKind,
    ComponentSpec,
    parse_spec,
)
from nimsforest.validation import first_error

MAX_BODY = 2 * 1024 * 1024  # a request (a 256 KiB script: up to 6 bytes a character)


def _kind_names() -> dict[str, ComponentKind]:
    """Every way a kind may be written: singular, plural, its aliases (the Go original's
    short forms)."""
    names: dict[str, ComponentKind] = {}
    for kind, spec in SPEC_TYPES.items():
        for name in (kind.value, kind.plural, *spec.aliases):
            names[name] = kind
    return names


KIND_NAMES = _kind_names()


def parse_kind(value: str) -> ComponentKind:
    kind = KIND_NAMES.get(value.strip().lower())
    if kind is None:
        raise NotFound(f"'{value}' is not a component kind ({', '.join(k.value for k in SPEC_TYPES)}).")
    return kind


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Letters, digits, '_' and '-', at most 48 characters.",
        examples=["scoring"],
    )


def request_model(spec: type[ComponentSpec]) -> type[_In]:
    """The API body of a kind, derived from its spec: `name` and the spec's fields, where
    a field naming a file in forest.yaml (`script`, `prompt`) carries the file's content
    instead, with `<field>_name` its file name (shown, never read)."""
    inline = set(spec.file_fields.values())
    fields: dict[str, Any] = {}
    for name, info in spec.model_fields.items():
        if name in inline:
            continue
        if name in spec.file_fields:
            fields[name] = (str, Field(max_length=MAX_TEXT,
                                       description=f"The {name}'s content (not a path)"))
            fields[f"{name}_name"] = (str | None, Field(None, max_length=255,
                                                        description="Its file name, shown only"))
        else:
            fields[name] = (info.rebuild_annotation(), copy.copy(info))
    model: type[_In] = create_model(
        spec.__name__.removesuffix("Spec") + "In", __base__=_In, __doc__=spec.__doc__, **fields
    )
    return model


REQUEST_MODELS: dict[ComponentKind, type[_In]] = {
    kind: request_model(spec) for kind, spec in SPEC_TYPES.items()
}


def parse_request(kind: ComponentKind, body: Any) -> _In:
    """Validate a request body for `kind` (NATS payloads; HTTP bodies are validated by
    FastAPI against the same models). Raises Invalid with one sentence."""
    try:
        return REQUEST_MODELS[kind].model_validate(body)
    except ValidationError as exc:
        raise Invalid(validation_sentence(exc)) from None


def validation_sentence(exc: ValidationError | Iterable[Any]) -> str:
    err = first_error(exc)
    if err is None:
        return "The request is not valid."
    if err.type == "json_invalid":
        return "The request body is not valid JSON."
    return f"Field '{err.field}': {err.message}." if err.field else f"The request {err.message}."


def to_spec(kind: ComponentKind, req: _In) -> tuple[str, ComponentSpec, dict[str, str]]:
    """(name, the kind's spec with the content inline, {field: file name}); raises
    ForestConfigError when the body does not make a valid spec."""
    spec_type = SPEC_TYPES[kind]
    data = req.model_dump(exclude_unset=True)
    name = data.pop("name")
    files: dict[str, str] = {}
    for path_field, inline_field in spec_type.file_fields.items():
        if path_field in data:
            data[inline_field] = data.pop(path_field)
        shown = data.pop(f"{path_field}_name", None)
        if shown:
            files[path_field] = shown
    return name, parse_spec(kind, name, data), files


# --- answers ---------------------------------------------------------------------------------
class ErrorOut(BaseModel):
    error: str = Field(description="One sentence saying what is wrong.")


class ComponentView(StrEnum):
    """A component as the node that answers sees it: the forest's ComponentState, or
    where the desired entry stands when the forest does not run it."""

    RUNNING = "running"
    FAILED = "failed"
    STOPPED = "stopped"
    PENDING = "pending"  # desired, not applied here yet
    NOT_APPLIED = "not applied"  # desired, but it cannot run here (see last_error)


class ErrorState(StrEnum):
    """Whether a component's last error still holds (docs/OBSERVABILITY.md)."""

    CURRENT = "current"  # nothing completed successfully since, or it does not run
    CLEARED = "cleared"  # it completed an event successfully after the error


class ComponentOnNode(BaseModel):
    """One component on one node, from that node's status report."""

    node: str
    reporting: bool = Field(True, description="False: the node's last report is stale")
    state: ComponentView
    events_in: int = 0
    events_out: int = 0
    dropped: int = 0
    errors: int = 0
    dead: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    last_error: str | None = None
    last_error_at: datetime | None = None
    error_state: ErrorState | None = None
    last_ok_at: datetime | None = None
    pending: int | None = None
    pending_at: datetime | None = None


class ComponentOut(BaseModel):
    """One component: its desired entry and how it runs, on the node that answers (a
    node's view) or on every node that reports (the cluster view: counters summed, the
    worst state, the newest error with its node, `nodes` with each node's figures)."""

    kind: ComponentKind
    name: str
    state: ComponentView
    origin: Origin | None = None  # None: running here but not (or no longer) desired
    consumes: str | None = None
    publishes: str | None = None
    consumer: str | None = None
    events_in: int = 0
    events_out: int = 0
    dropped: int = 0
    errors: int = 0
    dead: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_error_node: str | None = Field(None, description="The node the last error happened on")
    error_state: ErrorState | None = Field(None, description="None when there is no error")
    last_ok_at: datetime | None = None
    pending: int | None = Field(
        None, description="Its durable consumer's lag: num_pending + num_ack_pending, as the "
        "freshest node's NATS observer read it (one consumer is shared: never summed); None "
        "when no node has read it")
    pending_at: datetime | None = Field(None, description="When that reading was taken")
    prompt_tokens: int = 0  # nims: tokens their brains' answers cost (on every node)
    completion_tokens: int = 0
    cost: float = 0.0
    files: dict[str, str] = {}
    digest: str | None = None
    revision: int | None = None
    by: str | None = None
    node: str | None = None
    at: datetime | None = None
    nodes: list[ComponentOnNode] = Field(
        default_factory=list, description="The cluster view: each reporting node's figures")


class ComponentDetail(ComponentOut):
    spec: dict[str, Any] = Field(
        default_factory=dict, description="The settings with the content inline; secrets hidden"
    )


class ChangeOut(BaseModel):
    action: Action
    kind: ComponentKind
    name: str
    revision: int = Field(description="The desired-state revision written")
    applied: bool = Field(description="This node runs that revision (or a later one)")
    message: str
    component: ComponentOut | None = None


class ReloadOut(BaseModel):
    file: str
    added: list[str] = []
    changed: list[str] = []
    removed: list[str] = []
    adopted: list[str] = []
    unchanged: int = 0
    revision: int
    applied: bool
    failed: dict[str, str] = {}  # label: why, the file's components FAILED on this node
    message: str


class ControlOut(BaseModel):
    state: WatchState
    sentence: str
    revision: int
    cycles: int
    problems: dict[str, str] = {}


class Scope(StrEnum):
    CLUSTER = "cluster"  # every node's report merged
    NODE = "node"  # one node's own report


class NodeResources(BaseModel):
    """What a node's processes (the daemon and the nats-server it runs) use."""

    cpu_percent: float | None = Field(None, description="Percent of one core since the last report")
    memory_bytes: int | None = Field(None, description="Resident memory of the node's processes")
    host_memory_percent: float | None = None
    host_memory_bytes: int | None = None
    cpus: int | None = None


class NodeSummary(BaseModel):
    """One node as its last status report shows it."""

    node: str
    zone: str | None = None
    reporting: bool = Field(description="False: no report for longer than three intervals")
    reported_at: datetime
    age: float = Field(description="Seconds since the answering node heard the report")
    running: bool
    healthy: bool
    control: str = Field(description="The node's control loop: its state")
    revision: int = Field(description="The desired-state revision the node applied")
    components: int
    not_running: int
    resources: NodeResources


class ReportState(StrEnum):
    STARTING = "starting"  # no report sent yet
    REPORTING = "reporting"  # its last report is stored in STATUS
    NOT_STORED = "not stored"  # its last report was sent but STATUS did not store it


class ReportsOut(BaseModel):
    """The answering node's status-report loop (it publishes and hears the reports)."""

    state: ReportState
    sentence: str
    interval: float


class StatusOut(BaseModel):
    node: str = Field(description="The node that answers")
    scope: Scope = Scope.NODE
    running: bool
    healthy: bool
    config_file: str | None
    control: ControlOut
    components: list[ComponentOut]
    nodes: list[NodeSummary] = Field(default_factory=list)
    reports: ReportsOut | None = None


class NodeReport(BaseModel):
    """What each node publishes to the STATUS bucket (key: its name) every interval."""

    node: str
    zone: str | None = None
    at: datetime
    interval: float
    resources: NodeResources
    status: StatusOut


__all__ = [
    "KIND_NAMES",
    "MAX_BODY",
    "REQUEST_MODELS",
    "AuditRecord",
    "ChangeOut",
    "ComponentDetail",
    "ComponentOut",
    "ComponentOnNode",
    "ComponentView",
    "ErrorState",
    "NodeReport",
    "NodeResources",
    "NodeSummary",
    "ReportState",
    "ReportsOut",
    "Scope",
    "ControlOut",
    "ErrorOut",
    "ReloadOut",
    "StatusOut",
    "parse_kind",
    "parse_request",
    "request_model",
    "to_spec",
    "validation_sentence",
]
