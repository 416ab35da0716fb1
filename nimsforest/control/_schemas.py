"""The JSON documents of the control plane (HTTP bodies and NATS payloads alike): typed
requests per kind, and the answers. Their schemas are the OpenAPI schema."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nimsforest.control._audit import Action, AuditRecord
from nimsforest.control._desired import Origin
from nimsforest.control.errors import Invalid, NotFound
from nimsforest.forest import ComponentKind
from nimsforest.validation import first_error

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$"
MAX_TEXT = 256 * 1024  # a script or prompt
MAX_BODY = 2 * 1024 * 1024  # a request (a 256 KiB script: up to 6 bytes a character)

# every way a kind may be written: singular, plural, the Go original's short forms
KIND_NAMES: dict[str, ComponentKind] = {
    "tree": ComponentKind.TREE,
    "trees": ComponentKind.TREE,
    "treehouse": ComponentKind.TREEHOUSE,
    "treehouses": ComponentKind.TREEHOUSE,
    "th": ComponentKind.TREEHOUSE,
    "nim": ComponentKind.NIM,
    "nims": ComponentKind.NIM,
    "source": ComponentKind.SOURCE,
    "sources": ComponentKind.SOURCE,
    "src": ComponentKind.SOURCE,
}


def parse_kind(value: str) -> ComponentKind:
    kind = KIND_NAMES.get(value.strip().lower())
    if kind is None:
        raise NotFound(f"'{value}' is not a component kind (tree, treehouse, nim, source).")
    return kind


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=NAME_PATTERN,
        description="Letters, digits, '_' and '-', at most 48 characters.",
        examples=["scoring"],
    )


class _Consuming(_In):
    ack_wait: float | str | None = Field(None, description="e.g. 30s (default 30 s; nims 60 s)")
    max_deliver: int | None = Field(None, ge=1, le=1000)
    max_inflight: int | None = Field(None, ge=1, le=10_000)


class LimitsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instructions: int | None = Field(None, ge=10_000)
    time: float | str | None = Field(None, description="CPU time per call, e.g. 1s")
    memory: int | str | None = Field(None, description="Lua heap, e.g. 64MB")


class TreeIn(_Consuming):
    watches: str = Field(min_length=1, max_length=256, description="A River pattern")
    publishes: str = Field(min_length=1, max_length=256, description="A leaf subject")
    script: str = Field(max_length=MAX_TEXT, description="The Lua source (not a path)")
    script_name: str | None = Field(None, max_length=255, description="Its file name, shown only")
    limits: LimitsIn | None = None


class TreeHouseIn(_Consuming):
    subscribes: str = Field(min_length=1, max_length=256, description="A leaf pattern")
    publishes: str = Field(min_length=1, max_length=256, description="A leaf subject")
    script: str = Field(max_length=MAX_TEXT, description="The Lua source (not a path)")
    script_name: str | None = Field(None, max_length=255, description="Its file name, shown only")
    limits: LimitsIn | None = None


class NimIn(_Consuming):
    subscribes: str = Field(min_length=1, max_length=256, description="A leaf pattern")
    publishes: str = Field(
        min_length=1, max_length=256, description="A leaf subject; may hold {field} placeholders"
    )
    prompt: str = Field(max_length=MAX_TEXT, description="The Jinja2 prompt text (not a path)")
    prompt_name: str | None = Field(None, max_length=255, description="Its file name, shown only")
    brain: str | dict[str, Any] | None = Field(
        None, description="rules (default), openai, anthropic, or a mapping as in forest.yaml"
    )
    humus: dict[str, Any] | None = None


class SourceIn(_In):
    type: Literal["http_webhook"] = "http_webhook"
    path: str = Field(min_length=1, max_length=256, description="Under /webhooks/")
    publishes: str = Field(min_length=1, max_length=256, description="A River subject")
    secret: str | None = Field(
        None, max_length=1024, description="Write ${VAR} to keep the secret out of the bucket"
    )
    signature: Literal["sha256", "github", "stripe", "none"] | None = None
    headers: list[str] | None = Field(None, max_length=64)
    tolerance: float | str | None = None


REQUEST_MODELS: dict[ComponentKind, type[_In]] = {
    ComponentKind.TREE: TreeIn,
    ComponentKind.TREEHOUSE: TreeHouseIn,
    ComponentKind.NIM: NimIn,
    ComponentKind.SOURCE: SourceIn,
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


def to_spec(kind: ComponentKind, req: _In) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(name, forest.yaml settings with the content inline, {field: file name})."""
    data = req.model_dump(exclude_none=True)
    name = data.pop("name")
    files: dict[str, str] = {}
    if kind in (ComponentKind.TREE, ComponentKind.TREEHOUSE):
        data["code"] = data.pop("script")
        if "script_name" in data:
            files["script"] = data.pop("script_name")
    elif kind is ComponentKind.NIM:
        data["template"] = data.pop("prompt")
        if "prompt_name" in data:
            files["prompt"] = data.pop("prompt_name")
    return name, data, files


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


class ComponentOut(BaseModel):
    """One component: its desired entry and how it runs on the node that answers."""

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
    files: dict[str, str] = {}
    digest: str | None = None
    revision: int | None = None
    by: str | None = None
    node: str | None = None
    at: datetime | None = None


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
    message: str


class ControlOut(BaseModel):
    state: str
    sentence: str
    revision: int
    cycles: int
    problems: dict[str, str] = {}


class StatusOut(BaseModel):
    node: str
    running: bool
    healthy: bool
    config_file: str | None
    control: ControlOut
    components: list[ComponentOut]


__all__ = [
    "KIND_NAMES",
    "MAX_BODY",
    "REQUEST_MODELS",
    "AuditRecord",
    "ChangeOut",
    "ComponentDetail",
    "ComponentOut",
    "ComponentView",
    "ControlOut",
    "ErrorOut",
    "NimIn",
    "ReloadOut",
    "SourceIn",
    "StatusOut",
    "TreeHouseIn",
    "TreeIn",
    "parse_kind",
    "parse_request",
    "to_spec",
    "validation_sentence",
]
