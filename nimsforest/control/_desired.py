"""The desired state: one entry per component, as stored in the FOREST KV bucket.

An entry holds the component's forest.yaml settings with its script or prompt CONTENT
inline (`script: x.lua` becomes `code: <the Lua>`, `prompt: x.md.j2` becomes
`template: <the text>`), so every node can run it without shared files. `${VAR}` in a
secret or brain setting is kept as written and expanded by each node from its own
environment, so secrets given that way never reach the bucket.

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
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from nimsforest.forest import (
    ComponentKind,
    ForestConfig,
    ForestConfigError,
    Problem,
    ProblemKind,
    Spec,
    check_components,
)
from nimsforest.forest.config import parse_spec
from nimsforest.forest.model import USER_KINDS, ComponentRef, component_label

# forest.yaml field naming a file -> the inline field that carries its content
_FILE_FIELDS = {"script": "code", "prompt": "template"}


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
    spec: dict[str, Any]  # forest.yaml settings, scripts and prompts inline
    files: dict[str, str] = {}  # e.g. {"script": "treehouses/scoring.lua"}: shown, never read
    digest: str
    by: str  # who made the change, e.g. "http 127.0.0.1", "signal", "nats cli@host"
    node: str  # the node that wrote it
    at: datetime

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


def digest(kind: ComponentKind, spec: Mapping[str, Any]) -> str:
    """sha256 over the kind and the canonical JSON of the spec (content included)."""
    text = json.dumps({"kind": kind.value, "spec": spec}, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def make_entry(
    kind: ComponentKind,
    name: str,
    spec: Mapping[str, Any],
    *,
    origin: Origin,
    by: str,
    node: str,
    files: Mapping[str, str] | None = None,
) -> DesiredComponent:
    clean = json.loads(json.dumps(dict(spec), default=str))  # plain JSON values only
    clean.pop("name", None)
    return DesiredComponent(
        kind=kind,
        name=name,
        origin=origin,
        spec=clean,
        files=dict(files or {}),
        digest=digest(kind, clean),
        by=by,
        node=node,
        at=datetime.now(UTC),
    )


def inline_files(
    kind: ComponentKind, name: str, raw: Mapping[str, Any], base_dir: Path, *, file: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """A component's raw settings with `script`/`prompt` files replaced by their content.
    Returns (settings, {field: original file name})."""
    spec = dict(raw)
    files: dict[str, str] = {}
    for path_field, inline_field in _FILE_FIELDS.items():
        if path_field not in spec or spec[path_field] is None:
            continue
        rel = str(spec.pop(path_field))
        full = Path(rel) if Path(rel).is_absolute() else base_dir / rel
        try:
            spec[inline_field] = full.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ForestConfigError(
                f"file {full} cannot be read: {getattr(exc, 'strerror', None) or exc}",
                file=file,
                component=ComponentRef(kind=kind, name=name),
                field=path_field,
            ) from None
        files[path_field] = rel
    return spec, files


def file_entries(path: Path, *, by: str, node: str) -> dict[str, DesiredComponent]:
    """The components of forest.yaml at `path` as desired entries of origin `file`.

    The caller validates the file first (load_forest_config); this re-reads the raw YAML
    so that `${VAR}` stays unexpanded in the bucket."""
    data = yaml.safe_load(path.read_text()) or {}
    out: dict[str, DesiredComponent] = {}
    for kind in USER_KINDS:
        for name, raw in (data.get(kind.plural) or {}).items():
            spec, files = inline_files(kind, str(name), raw or {}, path.parent, file=str(path))
            e = make_entry(
                kind, str(name), spec, origin=Origin.FILE, by=by, node=node, files=files
            )
            out[e.key] = e
    return out


def without_components(config: ForestConfig) -> ForestConfig:
    """`config` with no trees, treehouses, nims or sources (path and decomposer kept)."""
    return config.model_copy(update={k.plural: {} for k in USER_KINDS})


def desired_config(
    base: ForestConfig, entries: Iterable[DesiredComponent]
) -> tuple[ForestConfig, dict[ComponentRef, Problem]]:
    """The ForestConfig for `entries` on top of `base` (its path and decomposer), and the
    problems of the entries that cannot run on this node (a spec that does not parse here,
    a clash with another component), which are left out so that the others still apply."""
    sections: dict[str, dict[str, Any]] = {k.plural: {} for k in USER_KINDS}
    problems: dict[ComponentRef, Problem] = {}
    parsed: list[tuple[ComponentRef, Spec]] = []
    for e in sorted(entries, key=lambda e: e.key):
        try:
            parsed.append((e.ref, parse_spec(e.kind, e.name, e.spec, file="desired state")))
        except ForestConfigError as exc:
            problems[e.ref] = Problem(ref=e.ref, kind=ProblemKind.INVALID, sentence=str(exc))
    problems.update((p.ref, p) for p in check_components(parsed))
    for ref, spec in parsed:
        if ref not in problems:
            sections[ref.kind.plural][ref.name] = spec
    return base.model_copy(update=sections), problems


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
