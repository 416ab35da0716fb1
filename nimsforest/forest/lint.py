"""`nimsforest lint`: every check of a forest.yaml, without NATS and without running it.

    read, yaml   the file can be read and is YAML (the line of a YAML error)
    config       each section and each component's settings (all of them, not the first)
    clash        the rules between components (a webhook path used twice)
    build        each component built as a node builds it: every Lua script compiled in
                 the sandbox (a standard global the sandbox lacks, such as os.execute, is
                 an error: the same check refuses it when it is added), every template
                 parsed, every brain configured
    env          an environment variable a component needs that is not set here (a
                 warning: the node that runs it needs it)
    global       a global a script reads that neither the sandbox nor the script defines
                 (nil at run time: a typo, most likely; a warning)
    prompt       every template rendered with sample inputs (missing fields left empty)
    unfed        a component subscribing to a leaf subject no component publishes (a
                 warning: leaves may come from outside the forest)
    cycle        leaves going round a cycle of components (an error)

Every finding names the file and line at fault: forest.yaml's line for a setting, the
script's or prompt's own line for what is wrong inside it. Pure functions (files are read,
nothing else); the CLI (nimsforest/cli/lint.py) only prints.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from nimsforest.forest.build import build_component
from nimsforest.forest.config import (
    IGNORED_SECTIONS,
    SECTION_ALIASES,
    ForestConfig,
    config_error,
    parse_forest_config,
    parse_spec,
)
from nimsforest.forest.errors import ForestConfigError, MissingVariable
from nimsforest.forest.handlers import NimHandler
from nimsforest.forest.luacheck import missing_globals
from nimsforest.forest.model import ComponentKind, ComponentRef
from nimsforest.forest.problems import check_components
from nimsforest.forest.prompt import PromptError
from nimsforest.forest.sandbox import removed_globals, sandbox_globals
from nimsforest.forest.specs import (
    USER_KINDS,
    ComponentSpec,
    DecomposerSpec,
    NimSpec,
    TreeHouseSpec,
    TreeSpec,
)
from nimsforest.forest.subjects import RIVER_PREFIX, overlap


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Check(StrEnum):
    READ = "read"
    YAML = "yaml"
    CONFIG = "config"
    CLASH = "clash"
    BUILD = "build"
    ENV = "env"
    GLOBAL = "global"
    PROMPT = "prompt"
    UNFED = "unfed"
    CYCLE = "cycle"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    check: Check
    file: str
    line: int | None
    sentence: str  # names the component and the field
    component: ComponentRef | None = None
    field: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file

    def as_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity.value, "check": self.check.value, "file": self.file,
            "line": self.line, "message": self.sentence,
            "component": str(self.component) if self.component else None, "field": self.field,
        }


@dataclass(frozen=True)
class LintReport:
    file: str
    findings: tuple[Finding, ...]
    components: int = 0

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.WARNING)


# --- where things are in forest.yaml ---------------------------------------------------------
@dataclass
class _Lines:
    """Lines (1-based) of every key in forest.yaml, by path (section, name, field, ...)."""

    keys: dict[tuple[str, ...], int] = field(default_factory=dict)
    values: dict[tuple[str, ...], yaml.Node] = field(default_factory=dict)
    # the key of each component's section in the file (an alias such as `songbirds`)
    sections: dict[ComponentRef, str] = field(default_factory=dict)

    def path(self, ref: ComponentRef, field_: str | None) -> tuple[str, ...]:
        key = self.sections.get(ref, ref.kind.plural)
        return (key, ref.name, *(field_.split(".") if field_ else ()))

    @classmethod
    def of(cls, root: yaml.Node | None) -> _Lines:
        out = cls()

        def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    p = (*path, str(k.value))
                    out.keys[p], out.values[p] = k.start_mark.line + 1, v
                    walk(v, p)
            elif isinstance(node, yaml.SequenceNode):
                for i, v in enumerate(node.value):
                    p = (*path, str(i))
                    out.keys[p], out.values[p] = v.start_mark.line + 1, v
                    walk(v, p)

        if root is not None:
            walk(root, ())
        return out

    def at(self, *path: str) -> int | None:
        """The line of the longest prefix of `path` that forest.yaml has."""
        for n in range(len(path), 0, -1):
            if path[:n] in self.keys:
                return self.keys[path[:n]]
        return None

    def inline(self, path: tuple[str, ...], line: int) -> int | None:
        """forest.yaml's line of line `line` of an inline script or template at `path`."""
        node = self.values.get(path)
        if not isinstance(node, yaml.ScalarNode):
            return self.at(*path)
        block = node.style in ("|", ">")
        return node.start_mark.line + (1 if block else 0) + line





def _sentence(exc: ForestConfigError) -> str:
    """The error's sentence without the file (the finding names the file and line)."""
    return str(ForestConfigError(exc.reason, component=exc.component, field=exc.field))


# --- the whole file ----------------------------------------------------------------------------
def lint_forest(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> LintReport:
    """Every finding of forest.yaml at `path` (its scripts and prompts read from beside it),
    with `env` (os.environ by default) as the environment the components are built with."""
    p = Path(path).expanduser().resolve()
    file = str(p)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        return LintReport(file, (Finding(Severity.ERROR, Check.READ, file, None,
                                         f"cannot be read: {why}."),))
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or "invalid YAML"
        return LintReport(file, (Finding(Severity.ERROR, Check.YAML, file,
                                         mark.line + 1 if mark else None,
                                         f"is not valid YAML: {problem}."),))
    lines = _Lines.of(root)
    findings: list[Finding] = []

    def add(severity: Severity, check: Check, sentence: str, line: int | None,
            ref: ComponentRef | None = None, field_: str | None = None,
            in_file: str = file) -> None:
        findings.append(Finding(severity, check, in_file, line, sentence, ref, field_))

    if data is None:
        data = {}
    if not isinstance(data, dict):
        add(Severity.ERROR, Check.CONFIG,
            "must be a mapping with sources, trees, treehouses and nims.", 1)
        return LintReport(file, tuple(findings))
    for key, why in IGNORED_SECTIONS.items():
        if key in data:
            add(Severity.WARNING, Check.CONFIG, f"section '{key}': {why}.", lines.at(key))
    # the file's sections by forest.yaml's own rules (config.py): its components left out
    skeleton: dict[str, Any] = {k: ({} if k != "decomposer" else None) for k in map(str, data)}
    try:
        parse_forest_config(skeleton, base_dir=p.parent, path=p)
    except ForestConfigError as exc:
        known = {*(k.plural for k in USER_KINDS), *SECTION_ALIASES, "decomposer", *IGNORED_SECTIONS}
        odd = next((k for k in map(str, data) if k not in known), None)
        add(Severity.ERROR, Check.CONFIG, f"{exc.reason}.", lines.at(odd) if odd else 1)
        return LintReport(file, tuple(findings))
    written = {SECTION_ALIASES.get(k, k): k for k in map(str, data)}  # section -> its key
    specs: dict[ComponentRef, ComponentSpec] = {}
    for kind in USER_KINDS:
        key = written.get(kind.plural, kind.plural)
        entries = data.get(key) or {}
        if not isinstance(entries, dict):
            add(Severity.ERROR, Check.CONFIG,
                f"section '{key}' must be a mapping of name: settings.", lines.at(key))
            continue
        for name, raw in entries.items():
            ref = ComponentRef(kind=kind, name=str(name))
            lines.sections[ref] = key
            try:
                specs[ref] = parse_spec(kind, str(name), raw, file=file)
            except ForestConfigError as exc:
                add(Severity.ERROR, Check.CONFIG, _sentence(exc),
                    lines.at(*lines.path(ref, exc.field)), ref, exc.field)
    try:
        decomposer = DecomposerSpec.model_validate(data.get("decomposer") or {})
    except ValidationError as exc:
        err = config_error(exc, file, "decomposer")
        add(Severity.ERROR, Check.CONFIG, _sentence(err),
            lines.at("decomposer", *(err.field or "").split(".")))
        decomposer = DecomposerSpec()
    for problem in check_components(specs.items()):
        add(Severity.ERROR, Check.CLASH, problem.sentence,
            lines.at(*lines.path(problem.ref, problem.field)), problem.ref, problem.field)
    sections: dict[ComponentKind, dict[str, ComponentSpec]] = {}
    for ref, spec in specs.items():
        sections.setdefault(ref.kind, {})[ref.name] = spec
    cfg = ForestConfig(base_dir=p.parent, path=p, decomposer=decomposer).with_components(sections)
    for ref, spec in specs.items():
        findings += _lint_component(cfg, ref, spec, lines, os.environ if env is None else env)
    for ref, field_, severity, check, sentence in wiring(specs):
        add(severity, check, sentence, lines.at(*lines.path(ref, field_)), ref, field_)
    findings.sort(key=lambda f: (f.file != file, f.file, f.line or 0, f.sentence))
    return LintReport(file, tuple(findings), components=len(specs))


# --- one component -----------------------------------------------------------------------------
class _Env(Mapping[str, str]):
    """The environment, plus stand-ins for the variables lint already reported missing."""

    def __init__(self, env: Mapping[str, str], stand_ins: dict[str, str]) -> None:
        self._env, self._stand_ins = env, stand_ins

    def __getitem__(self, key: str) -> str:
        return self._env[key] if key in self._env else self._stand_ins[key]

    def __iter__(self) -> Iterator[str]:
        return iter({*self._env, *self._stand_ins})

    def __len__(self) -> int:
        return len({*self._env, *self._stand_ins})


def _lint_component(cfg: ForestConfig, ref: ComponentRef, spec: ComponentSpec, lines: _Lines,
                    env: Mapping[str, str]) -> list[Finding]:
    file = cfg.label
    out: list[Finding] = []
    stand_ins: dict[str, str] = {}
    comp = None
    for _ in range(16):  # each pass finds at most one missing variable
        try:
            comp = build_component(cfg, ref.kind, ref.name, spec, _Env(env, stand_ins))
            break
        except MissingVariable as exc:
            out.append(Finding(Severity.WARNING, Check.ENV, file,
                               lines.at(*lines.path(ref, exc.field)),
                               _sentence(MissingVariable(exc.variable, component=ref,
                                                         field=exc.field)).rstrip(".")
                               + " here; the node that runs it needs it.", ref,
                               exc.field))
            stand_ins[exc.variable] = "lint"
        except ForestConfigError as exc:
            in_file, line = _where_inside(cfg, ref, spec, exc.field, exc.line, lines)
            out.append(Finding(Severity.ERROR, Check.BUILD, in_file, line, _sentence(exc),
                               ref, exc.field))
            return out
    if comp is None:
        return out
    if isinstance(spec, (TreeSpec, TreeHouseSpec)):
        out += _unknown_globals(cfg, ref, spec, lines)
    if isinstance(spec, NimSpec) and isinstance(comp.handler, NimHandler):
        prompt = comp.handler.prompt
        try:
            prompt.render_sample(sample_context(ref))
        except PromptError as exc:
            fld = "prompt" if spec.prompt is not None else "template"
            in_file, line = _where_inside(cfg, ref, spec, fld, exc.line, lines)
            out.append(Finding(Severity.ERROR, Check.PROMPT, in_file, line,
                               f"{ref}, field '{fld}': {exc}.", ref, fld))
    return out


def sample_context(ref: ComponentRef) -> dict[str, Any]:
    """What a template is rendered with by lint: the variables every leaf gives (`data`,
    `leaf`); the leaf's own fields are left empty (any use of them renders)."""
    return {"data": {}, "leaf": {"subject": "sample", "source": "lint", "ts": 0}}


def _where_inside(cfg: ForestConfig, ref: ComponentRef, spec: ComponentSpec, fld: str | None,
                  line: int | None, lines: _Lines) -> tuple[str, int | None]:
    """The file and line of a problem inside a component's script or template: the file
    it names, or forest.yaml's line when it is inline."""
    file_fields = type(spec).file_fields
    if fld in file_fields and getattr(spec, fld) is not None:
        return str(cfg.resolve(getattr(spec, fld))), line
    if fld in file_fields.values() and line is not None:
        return cfg.label, lines.inline(lines.path(ref, fld), line)
    return cfg.label, lines.at(*lines.path(ref, fld))


def _unknown_globals(cfg: ForestConfig, ref: ComponentRef, spec: TreeSpec | TreeHouseSpec,
                     lines: _Lines) -> list[Finding]:
    fld = "script" if spec.script is not None else "code"
    try:
        source = cfg.resolve(spec.script).read_text() if spec.script else (spec.code or "")
    except (OSError, UnicodeDecodeError):
        return []  # the build said so
    out = []
    for use in missing_globals(source, sandbox_globals()) or ():
        if use.name in removed_globals():
            continue  # an error of the build
        in_file, line = _where_inside(cfg, ref, spec, fld, use.line, lines)
        out.append(Finding(
            Severity.WARNING, Check.GLOBAL, in_file, line,
            f"{ref}, field '{fld}': reads the global {use.shown}, which neither the sandbox "
            "nor the script defines (nil when it runs; a typo?).", ref, fld))
    return out


# --- wiring ------------------------------------------------------------------------------------
def _leaf_out(spec: ComponentSpec) -> str | None:
    """The leaf subject a component publishes (placeholders as `*`), None for the River."""
    pub = spec.publishes
    if pub.startswith(RIVER_PREFIX):
        return None
    out = []
    for tok in pub.split("."):
        out.append("*" if "{" in tok else tok)
    return ".".join(out)


def _leaf_in(spec: ComponentSpec) -> str | None:
    subscribes = getattr(spec, "subscribes", None)
    return subscribes if isinstance(subscribes, str) else None


def wiring(
    specs: Mapping[ComponentRef, ComponentSpec],
) -> list[tuple[ComponentRef, str, Severity, Check, str]]:
    """What is wrong between the components: (component, field, severity, check, sentence)."""
    refs = sorted(specs, key=lambda r: (r.kind.value, r.name))
    outs = {r: _leaf_out(specs[r]) for r in refs}
    ins = {r: _leaf_in(specs[r]) for r in refs}
    edges: dict[ComponentRef, list[ComponentRef]] = {
        r: [s for s in refs if (o := outs[r]) and (i := ins[s]) and overlap(o, i)]
        for r in refs
    }
    found: list[tuple[ComponentRef, str, Severity, Check, str]] = []
    for r in refs:
        sub = ins[r]
        if sub is not None and not any(r in edges[s] for s in refs):
            found.append((r, "subscribes", Severity.WARNING, Check.UNFED,
                          f"{r} subscribes to {sub}, which no component publishes (leaves "
                          "may still come from outside the forest)."))
    reported: set[ComponentRef] = set()
    for r in refs:
        if r in reported:
            continue
        cycle = _cycle_through(r, edges)
        if cycle:
            reported.update(cycle)
            names = " -> ".join(str(c) for c in [*cycle, cycle[0]])
            found.append((r, "publishes", Severity.ERROR, Check.CYCLE,
                          f"leaves go round a cycle: {names}; a leaf no script drops is "
                          "handled for ever."))
    return found


def _cycle_through(start: ComponentRef,
                   edges: Mapping[ComponentRef, list[ComponentRef]]) -> list[ComponentRef]:
    """The shortest cycle from `start` back to itself, or []."""
    parents: dict[ComponentRef, ComponentRef] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for to in edges[node]:
                if to == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return list(reversed(path))
                if to not in parents:
                    parents[to] = node
                    nxt.append(to)
        frontier = nxt
    return []


__all__ = [
    "Check",
    "Finding",
    "LintReport",
    "Severity",
    "lint_forest",
    "sample_context",
    "wiring",
]
