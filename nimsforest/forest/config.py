"""forest.yaml: the typed configuration of a forest, and its loader.

```yaml
sources:                       # ways into the River besides `flow` and POST /api/v1/river
  contacts:
    type: http_webhook
    path: /webhooks/contacts   # must start with /webhooks/
    publishes: river.contacts  # the `river.` prefix may be left out
    secret: ${CONTACTS_SECRET} # optional; ${VAR} is taken from the environment
    signature: sha256          # sha256 (X-Signature-256) | github | stripe | none
    headers: [X-Request-Id]    # request headers copied into the payload
outputs:                       # or `songbirds:` (the Go original's name)
  crm: {subscribes: lead.qualified, type: http, url: "https://crm.example/hook", secret: ${CRM_SECRET}}
trees:
  contacts: {watches: river.contacts, publishes: contact.created, script: trees/contacts.lua}
treehouses:
  scoring: {subscribes: contact.created, publishes: lead.scored, script: treehouses/scoring.lua}
nims:
  qualify:
    subscribes: lead.scored
    publishes: lead.qualified  # may hold {field} placeholders filled from the output
    prompt: nims/qualify.md.j2
    brain:                     # rules (default, offline) | openai | anthropic | ollama
      type: rules
      rules: [{when: "score >= 70", output: {pursue: true}}, {output: {pursue: false}}]
```
Paths are relative to the file. Every component also takes `ack_wait`, `max_deliver` and
`max_inflight`; Lua components take `limits: {instructions, time, memory}`. Unknown keys
are errors. A bad file raises ForestConfigError naming the file, the component and field.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, SerializeAsAny, ValidationError

from nimsforest.forest.errors import ForestConfigError
from nimsforest.forest.model import ComponentKind, ComponentRef, component_label
from nimsforest.forest.problems import Problem, ProblemKind, check_components
from nimsforest.forest.specs import (  # noqa: F401 - re-exported: the config vocabulary
    NAME_RE,
    SPEC_TYPES,
    USER_KINDS,
    AnthropicBrainSpec,
    BrainSpec,
    ComponentSpec,
    DecomposerSpec,
    HumusSpec,
    LimitsSpec,
    NimSpec,
    OpenAIBrainSpec,
    Rule,
    RulesBrainSpec,
    SignatureKind,
    SourceSpec,
    Spec,
    TreeHouseSpec,
    TreeSpec,
    _HttpBrain,
    _Spec,
)
from nimsforest.validation import first_error


class ForestConfig(_Spec):
    """A whole forest. `base_dir` anchors relative script and prompt paths; `components`
    holds each kind's specs by name (forest.yaml's sections)."""

    base_dir: Path
    path: Path | None = None
    components: dict[ComponentKind, dict[str, SerializeAsAny[ComponentSpec]]] = Field(
        default_factory=dict
    )
    decomposer: DecomposerSpec = DecomposerSpec()
    # components of the file left out because their settings are invalid (read with
    # `tolerant`): a node shows each one FAILED with its sentence and runs the others
    invalid: tuple[Problem, ...] = ()

    @classmethod
    def empty(cls, base_dir: Path | None = None) -> ForestConfig:
        """A forest with no components (the decomposer still runs)."""
        return cls(base_dir=base_dir or Path.cwd())

    def specs(self, kind: ComponentKind) -> dict[str, ComponentSpec]:
        return dict(self.components.get(kind, {}))

    def with_spec(self, kind: ComponentKind, name: str, spec: Spec | None) -> ForestConfig:
        """A copy with `name` set to `spec` (or removed when spec is None)."""
        specs = self.specs(kind)
        if spec is None:
            specs.pop(name, None)
        else:
            specs[name] = spec
        return self.model_copy(update={"components": {**self.components, kind: specs}})

    def with_components(
        self, components: Mapping[ComponentKind, Mapping[str, ComponentSpec]]
    ) -> ForestConfig:
        """A copy with exactly these components (path and decomposer kept)."""
        return self.model_copy(
            update={"components": {k: dict(v) for k, v in components.items() if v}}
        )

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.base_dir / path)

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "forest config"

    # conveniences for the kinds forest.yaml has always had (a new kind needs none)
    @property
    def trees(self) -> dict[str, ComponentSpec]:
        return self.specs(ComponentKind.TREE)

    @property
    def treehouses(self) -> dict[str, ComponentSpec]:
        return self.specs(ComponentKind.TREEHOUSE)

    @property
    def nims(self) -> dict[str, ComponentSpec]:
        return self.specs(ComponentKind.NIM)

    @property
    def sources(self) -> dict[str, ComponentSpec]:
        return self.specs(ComponentKind.SOURCE)


def check_name(kind: ComponentKind, name: Any, file: str | None = None) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ForestConfigError(
            f"'{name}' is not a valid {kind.value} name (letters, digits, '_' and '-', at most 48)",
            file=file,
        )
    return name


def parse_spec(kind: ComponentKind, name: str, raw: Any, *, file: str | None = None) -> Spec:
    """Validate one component's mapping into its kind's spec; errors name the file, the
    component and the field. `${VAR}` stays as written (see build.expand_env)."""
    check_name(kind, name, file)
    label = ComponentRef(kind=kind, name=name)
    if not isinstance(raw, dict):
        raise ForestConfigError("must be a mapping of settings", file=file, component=label)
    raw = dict(raw)
    raw.pop("name", None)  # the name is the key, as in the Go original
    try:
        return SPEC_TYPES[kind].model_validate(raw)
    except ValidationError as exc:
        raise config_error(exc, file, label) from None


_BRAIN_TYPES = ("rules", "openai", "anthropic", "ollama")


def config_error(
    exc: ValidationError, file: str | None, label: ComponentRef | str
) -> ForestConfigError:
    err = first_error(exc)
    assert err is not None  # a ValidationError has at least one error
    loc = list(err.loc)
    # drop union branch names pydantic adds for the brain (e.g. brain.rules.rules -> brain.rules)
    if len(loc) >= 2 and loc[0] == "brain" and loc[1] in _BRAIN_TYPES:
        loc = [loc[0], *loc[2:]]
    if len(loc) >= 3 and loc[0] == "fallback" and loc[2] in _BRAIN_TYPES:
        loc = [*loc[:2], *loc[3:]]
    msg = err.message
    if err.type == "union_tag_invalid":
        msg = f"brain type must be one of {', '.join(_BRAIN_TYPES)}"
    return ForestConfigError(msg, file=file, component=label, field=".".join(loc) or None)


# other names of a section (the Go original's): name -> the section it is
SECTION_ALIASES: dict[str, str] = {"songbirds": ComponentKind.OUTPUT.plural}
log = logging.getLogger("nimsforest.forest")

_TOP_KEYS = {*(k.plural for k in USER_KINDS), *SECTION_ALIASES, "decomposer"}
# sections of the Go original's forest.yaml that load and do nothing here, with why
IGNORED_SECTIONS = {
    "viewer": "the Go original's live view is ignored: every node serves a live dashboard "
              "at /ui (docs/OBSERVABILITY.md)",
}


def parse_forest_config(data: Any, *, base_dir: Path, path: Path | None = None,
                        tolerant: bool = False) -> ForestConfig:
    """Build a ForestConfig from already-parsed YAML (no files are read). The first bad
    component raises; with `tolerant`, bad components are left out and listed in the
    config's `invalid` (the file's shape, its sections and the decomposer still raise)."""
    file = str(path) if path else None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ForestConfigError(
            "must be a mapping with trees, treehouses, nims and sources", file=file
        )
    ignored = [k for k in IGNORED_SECTIONS if k in data]
    if ignored:
        data = {k: v for k, v in data.items() if k not in IGNORED_SECTIONS}
    unknown = sorted(set(map(str, data)) - _TOP_KEYS)
    if unknown:
        raise ForestConfigError(
            f"'{unknown[0]}' is not a known section (expected {', '.join(sorted(_TOP_KEYS))})",
            file=file,
        )
    for alias, section in SECTION_ALIASES.items():
        if alias in data:
            if section in data:
                raise ForestConfigError(
                    f"give '{section}' or '{alias}' (the same section), not both", file=file
                )
            data = {**{k: v for k, v in data.items() if k != alias}, section: data[alias]}
    sections: dict[ComponentKind, dict[str, ComponentSpec]] = {}
    invalid: list[Problem] = []
    for kind in USER_KINDS:
        entries = data.get(kind.plural) or {}
        if not isinstance(entries, dict):
            raise ForestConfigError(
                f"section '{kind.plural}' must be a mapping of name: settings", file=file
            )
        sections[kind] = {}
        for n, raw in entries.items():
            try:
                sections[kind][str(n)] = parse_spec(kind, str(n), raw, file=file)
            except ForestConfigError as exc:
                if not tolerant or exc.ref is None:
                    raise
                invalid.append(Problem(ref=exc.ref, kind=ProblemKind.INVALID,
                                       sentence=str(exc), field=exc.field))
    for problem in check_components(
        (ComponentRef(kind=kind, name=name), spec)
        for kind, specs in sections.items()
        for name, spec in specs.items()
    ):
        error = ForestConfigError(
            problem.sentence.removeprefix(f"{problem.ref}: "),
            file=file, component=problem.ref, field=problem.field,
        )
        if not tolerant:
            raise error
        sections[problem.ref.kind].pop(problem.ref.name, None)
        invalid.append(Problem(ref=problem.ref, kind=problem.kind, sentence=str(error),
                               field=problem.field))
    try:
        decomposer = DecomposerSpec.model_validate(data.get("decomposer") or {})
    except ValidationError as exc:
        raise config_error(exc, file, "decomposer") from None
    return ForestConfig(
        base_dir=base_dir, path=path, decomposer=decomposer, invalid=tuple(invalid)
    ).with_components(sections)


def read_forest_config(path: str | os.PathLike[str], *, tolerant: bool = False) -> ForestConfig:
    """Read and validate forest.yaml (its scripts and prompts are compiled by
    nimsforest.forest.loading.load_forest_config); `tolerant`: see parse_forest_config."""
    p = Path(path).expanduser().resolve()
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ForestConfigError("does not exist", file=str(p)) from None
    except OSError as exc:
        raise ForestConfigError(f"cannot be read: {exc.strerror}", file=str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ForestConfigError(f"is not valid YAML{where}: {problem}", file=str(p)) from None
    if isinstance(data, dict):
        for key in IGNORED_SECTIONS.keys() & data.keys():
            log.info("%s: section '%s': %s", p, key, IGNORED_SECTIONS[key])
    return parse_forest_config(data, base_dir=p.parent, path=p, tolerant=tolerant)


__all__ = [
    "SPEC_TYPES",
    "AnthropicBrainSpec",
    "DecomposerSpec",
    "ForestConfig",
    "HumusSpec",
    "LimitsSpec",
    "NimSpec",
    "OpenAIBrainSpec",
    "Rule",
    "RulesBrainSpec",
    "SignatureKind",
    "SourceSpec",
    "Spec",
    "TreeHouseSpec",
    "TreeSpec",
    "component_label",
    "read_forest_config",
    "parse_forest_config",
    "parse_spec",
]
