"""The desired state: one entry per component, as stored in the FOREST KV bucket.

An entry holds the component's typed spec (its kind's model, nimsforest.forest) with its
script or prompt CONTENT inline (`script: x.lua` becomes `code: <the Lua>`, `prompt:
x.md.j2` becomes `template: <the text>`), so every node can run it without shared files.
`${VAR}` in a secret or brain setting is kept as written and expanded by each node from
its own environment when it builds the component, so secrets given that way never reach
the bucket. The spec travels JSON -> model -> bucket -> model, never as a loose dict.

Everything here is pure (no NATS): building entries, the digest, turning a set of
entries into a ForestConfig, and planning a reload of the configuration file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, SerializeAsAny, model_validator

from nimsforest.forest import (
    SPEC_TYPES,
    USER_KINDS,
    ComponentKind,
    ComponentRef,
    ComponentSpec,
    ForestConfig,
    ForestConfigError,
    Problem,
    check_components,
    component_label,
)


class Origin(StrEnum):
    """Who owns a component: the configuration file (reload makes these equal to it) or
    the API / NATS control plane (reload leaves these alone)."""

    FILE = "file"
    API = "api"


class DesiredComponent(BaseModel):
    """One component of the desired state (the value under key `<kind>.<name>`)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    kind: ComponentKind
    name: str
    origin: Origin
    spec: SerializeAsAny[ComponentSpec]  # the kind's spec, scripts and prompts inline
    files: dict[str, str] = {}  # e.g. {"script": "treehouses/scoring.lua"}: shown, never read
    digest: str
    by: str  # who made the change, e.g. "http 127.0.0.1", "signal", "nats cli@host"
    node: str  # the node that wrote it
    at: datetime

    @model_validator(mode="before")
    @classmethod
    def _spec_of_its_kind(cls, data: Any) -> Any:
        """A stored spec is read as the model of the entry's kind."""
        if isinstance(data, dict) and isinstance(data.get("spec"), dict):
            spec_type = SPEC_TYPES.get(ComponentKind(str(data.get("kind"))))
            if spec_type is None:
                raise ValueError(f"'{data.get('kind')}' is not a component kind")
            data = {**data, "spec": spec_type.model_validate(data["spec"])}
        return data

    @property
    def key(self) -> str:
        return entry_key(self.kind, self.name)

    @property
    def ref(self) -> ComponentRef:
        return ComponentRef(kind=self.kind, name=self.name)

    @property
    def label(self) -> str:
        return component_label(self.kind, self.name)

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, data: bytes) -> DesiredComponent:
        return cls.model_validate_json(data)


def entry_key(kind: ComponentKind, name: str) -> str:
    return f"{kind.value}.{name}"


def digest(kind: ComponentKind, spec: ComponentSpec) -> str:
    """sha256 over the kind and the canonical JSON of the spec (content included; settings
    left at their defaults are left out, so a new setting does not change old digests)."""
    body = spec.model_dump(mode="json", exclude_defaults=True)
    text = json.dumps({"kind": kind.value, "spec": body}, sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def make_entry(
    kind: ComponentKind,
    name: str,
    spec: ComponentSpec,
    *,
    origin: Origin,
    by: str,
    node: str,
    files: Mapping[str, str] | None = None,
) -> DesiredComponent:
    return DesiredComponent(
        kind=kind,
        name=name,
        origin=origin,
        spec=spec,
        files=dict(files or {}),
        digest=digest(kind, spec),
        by=by,
        node=node,
        at=datetime.now(UTC),
    )


def inline_files(
    spec: ComponentSpec, ref: ComponentRef, config: ForestConfig, *, keep_unreadable: bool = False
) -> tuple[ComponentSpec, dict[str, str]]:
    """`spec` with the files it names (`script`, `prompt`) replaced by their content.
    Returns (spec, {field: original file name}). A file that cannot be read raises, or
    with `keep_unreadable` stays named by its path (the node that builds it then fails
    that component alone, saying why)."""
    files: dict[str, str] = {}
    update: dict[str, Any] = {}
    for path_field, inline_field in type(spec).file_fields.items():
        rel = getattr(spec, path_field)
        if rel is None:
            continue
        full = config.resolve(rel)
        try:
            update[inline_field] = full.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            if not keep_unreadable:
                raise ForestConfigError(
                    f"file {full} cannot be read: {getattr(exc, 'strerror', None) or exc}",
                    file=config.label, component=ref, field=path_field,
                ) from None
            continue  # the path stays: building it says what is wrong (FAILED)
        update[path_field] = None
        files[path_field] = str(rel)
    return (spec.model_copy(update=update) if update else spec), files


def file_entries(config: ForestConfig, *, by: str, node: str,
                 keep_unreadable: bool = False) -> dict[str, DesiredComponent]:
    """The components of a forest.yaml (read, not expanded) as desired entries of origin
    `file` (`keep_unreadable`: see inline_files)."""
    out: dict[str, DesiredComponent] = {}
    for kind, specs in config.components.items():
        for name, spec in specs.items():
            ref = ComponentRef(kind=kind, name=name)
            inlined, files = inline_files(spec, ref, config, keep_unreadable=keep_unreadable)
            e = make_entry(kind, name, inlined, origin=Origin.FILE, by=by, node=node,
                           files=files)
            out[e.key] = e
    return out


def without_components(config: ForestConfig) -> ForestConfig:
    """`config` with no components (path and decomposer kept)."""
    return config.with_components({})


def desired_config(
    base: ForestConfig, entries: Iterable[DesiredComponent]
) -> tuple[ForestConfig, dict[ComponentRef, Problem]]:
    """The ForestConfig for `entries` on top of `base` (its path and decomposer), and the
    problems of the entries that cannot run with the others (a clash, such as a webhook
    path used twice), which are left out so that the others still apply."""
    chosen = sorted(entries, key=lambda e: e.key)
    problems = {p.ref: p for p in check_components((e.ref, e.spec) for e in chosen)}
    sections: dict[ComponentKind, dict[str, ComponentSpec]] = {k: {} for k in USER_KINDS}
    for e in chosen:
        if e.ref not in problems:
            sections[e.kind][e.name] = e.spec
    return base.with_components(sections), problems


@dataclass(frozen=True)
class FilePlan:
    """What a reload of the configuration file writes to the bucket.

    `conflicts` are names the file defines that the API owns with different content; a
    plan with conflicts is refused whole. `adopted` are API components the file defines
    identically: they become file components without a restart."""

    add: tuple[DesiredComponent, ...] = ()
    change: tuple[DesiredComponent, ...] = ()
    remove: tuple[DesiredComponent, ...] = ()  # the current entries to delete
    adopted: tuple[DesiredComponent, ...] = ()
    unchanged: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = field(default=())  # labels

    @property
    def empty(self) -> bool:
        return not (self.add or self.change or self.remove or self.adopted)


def plan_file_reload(
    wanted: Mapping[str, DesiredComponent], current: Mapping[str, DesiredComponent]
) -> FilePlan:
    """Make the file components of `current` equal to `wanted` (the file's entries);
    API components stay, unless the file names one of them (see FilePlan)."""
    add, change, remove, adopted, unchanged, conflicts = [], [], [], [], [], []
    for key, want in sorted(wanted.items()):
        have = current.get(key)
        if have is None:
            add.append(want)
        elif have.origin is Origin.API:
            if have.digest == want.digest:
                adopted.append(want)
            else:
                conflicts.append(want.label)
        elif have.digest != want.digest or have.files != want.files:
            change.append(want)
        else:
            unchanged.append(key)
    for key, have in sorted(current.items()):
        if have.origin is Origin.FILE and key not in wanted:
            remove.append(have)
    return FilePlan(
        add=tuple(add),
        change=tuple(change),
        remove=tuple(remove),
        adopted=tuple(adopted),
        unchanged=tuple(unchanged),
        conflicts=tuple(conflicts),
    )


__all__ = [
    "DesiredComponent",
    "FilePlan",
    "Origin",
    "desired_config",
    "digest",
    "entry_key",
    "file_entries",
    "inline_files",
    "make_entry",
    "plan_file_reload",
    "without_components",
]
