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
trees:
  contacts: {watches: river.contacts, publishes: contact.created, script: trees/contacts.lua}
treehouses:
  scoring: {subscribes: contact.created, publishes: lead.scored, script: treehouses/scoring.lua}
nims:
  qualify:
    subscribes: lead.scored
    publishes: lead.qualified  # may hold {field} placeholders filled from the output
    prompt: nims/qualify.md.j2
    brain: {type: rules, rules: [{when: "score >= 70", output: {pursue: true}}, {output: {pursue: false}}]}
```
Paths are relative to the file. Every component also takes `ack_wait`, `max_deliver` and
`max_inflight`; Lua components take `limits: {instructions, time, memory}`. Unknown keys
are errors. A bad file raises ForestConfigError naming the file, the component and field.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from nimsforest.forest.errors import ForestConfigError
from nimsforest.forest.model import ComponentKind
from nimsforest.forest.subjects import check_subject, river_subject
from nimsforest.settings import parse_duration

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*$", re.IGNORECASE)
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"'{value}' is not a size such as 64MB")
    return int(float(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()])


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


def _leaf_subject(v: str) -> str:
    return check_subject(v.strip())


def _leaf_pattern(v: str) -> str:
    return check_subject(v.strip(), pattern=True)


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LimitsSpec(_Spec):
    instructions: int = Field(10_000_000, ge=10_000)
    time: Duration = Field(1.0, gt=0)
    memory: Size = Field(64 * 1024 * 1024, ge=1024 * 1024)


class _Consuming(_Spec):
    """Delivery settings of the component's durable consumer."""

    ack_wait: Duration = Field(30.0, gt=0)
    max_deliver: int = Field(5, ge=1)
    max_inflight: int = Field(256, ge=1, le=10_000)


class _Scripted(_Consuming):
    script: Path | None = None  # a .lua file, relative to forest.yaml
    code: str | None = None  # or the Lua source inline
    limits: LimitsSpec = LimitsSpec()

    @model_validator(mode="after")
    def _one_source(self) -> _Scripted:
        if (self.script is None) == (self.code is None):
            raise ValueError("give exactly one of 'script' (a file) or 'code' (inline Lua)")
        return self


class TreeSpec(_Scripted):
    watches: str
    publishes: str

    @field_validator("watches")
    @classmethod
    def _watches(cls, v: str) -> str:
        return river_subject(v, pattern=True)

    @field_validator("publishes")
    @classmethod
    def _publishes(cls, v: str) -> str:
        return _leaf_subject(v)


class TreeHouseSpec(_Scripted):
    subscribes: str
    publishes: str

    @field_validator("subscribes")
    @classmethod
    def _subscribes(cls, v: str) -> str:
        return _leaf_pattern(v)

    @field_validator("publishes")
    @classmethod
    def _publishes(cls, v: str) -> str:
        return _leaf_subject(v)


class Rule(_Spec):
    when: str | None = None  # a Jinja2 expression over the input; no `when` always matches
    output: dict[str, Any]  # string values are Jinja2 templates rendered with the input


class RulesBrainSpec(_Spec):
    """Deterministic and offline. Rules come from here or, when this list is empty, from
    the `rules:` front matter of the nim's prompt file. The first matching rule wins."""

    type: Literal["rules"] = "rules"
    rules: tuple[Rule, ...] = ()


class _HttpBrain(_Spec):
    base_url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    system: str | None = None
    temperature: float | None = None
    max_tokens: int | None = Field(None, ge=1)
    timeout: Duration = Field(30.0, gt=0)
    retries: int = Field(3, ge=0, le=10)
    backoff: Duration = Field(0.5, ge=0)  # first retry delay; doubles each time, at most 30 s
    concurrency: int = Field(4, ge=1, le=256)


class OpenAIBrainSpec(_HttpBrain):
    """OpenAI-compatible /v1/chat/completions (OpenAI, Ollama, vLLM, llama.cpp).
    Defaults: OPENAI_BASE_URL, OPENAI_MODEL, key from OPENAI_API_KEY (optional)."""

    type: Literal["openai"]
    json_mode: bool = False  # send response_format {"type": "json_object"}


class AnthropicBrainSpec(_HttpBrain):
    """The Anthropic Messages API. Defaults: ANTHROPIC_BASE_URL, ANTHROPIC_MODEL, key
    from ANTHROPIC_API_KEY (required)."""

    type: Literal["anthropic"]
    version: str = "2023-06-01"


BrainSpec = Annotated[
    Union[RulesBrainSpec, OpenAIBrainSpec, AnthropicBrainSpec], Field(discriminator="type")
]


def _brain_shorthand(v: Any) -> Any:
    return {"type": v} if isinstance(v, str) else v


class HumusSpec(_Spec):
    """Which state change a nim writes to Humus for each output."""

    enabled: bool = True
    entity_fields: tuple[str, ...] = ("id", "contact_id", "entity_id")  # first string found
    action: Literal["create", "update", "delete"] = "update"


class NimSpec(_Consuming):
    subscribes: str
    publishes: str
    prompt: Path | None = None  # a Jinja2 template file, relative to forest.yaml
    template: str | None = None  # or the template inline
    brain: Annotated[BrainSpec, BeforeValidator(_brain_shorthand)] = RulesBrainSpec()
    humus: HumusSpec = HumusSpec()
    ack_wait: Duration = Field(60.0, gt=0)
    max_deliver: int = Field(10, ge=1)
    # default: 256 for the rules brain, twice the brain's concurrency for LLM brains (so
    # a node does not hoard leaves other nodes could take)
    max_inflight: int | None = Field(None, ge=1, le=10_000)

    @property
    def inflight(self) -> int:
        if self.max_inflight is not None:
            return self.max_inflight
        return 256 if isinstance(self.brain, RulesBrainSpec) else 2 * self.brain.concurrency

    @field_validator("subscribes")
    @classmethod
    def _subscribes(cls, v: str) -> str:
        return _leaf_pattern(v)

    @field_validator("publishes")
    @classmethod
    def _publishes(cls, v: str) -> str:
        check_subject(re.sub(r"\{[A-Za-z_][A-Za-z0-9_]*\}", "x", v.strip()))
        return v.strip()

    @model_validator(mode="after")
    def _one_prompt(self) -> NimSpec:
        if (self.prompt is None) == (self.template is None):
            raise ValueError("give exactly one of 'prompt' (a file) or 'template' (inline)")
        return self


class SignatureKind(StrEnum):
    SHA256 = "sha256"  # X-Signature-256: hex HMAC-SHA256 of the body (sha256= prefix allowed)
    GITHUB = "github"  # X-Hub-Signature-256: sha256=<hex>
    STRIPE = "stripe"  # Stripe-Signature: t=<unix>,v1=<hex of HMAC(t + "." + body)>
    NONE = "none"


class SourceSpec(_Spec):
    type: Literal["http_webhook"]
    path: str
    publishes: str
    secret: SecretStr | None = None
    signature: SignatureKind = SignatureKind.NONE  # default: sha256 with a secret, none without
    headers: tuple[str, ...] = ()
    tolerance: Duration = Field(300.0, gt=0)  # Stripe timestamp tolerance

    @field_validator("publishes")
    @classmethod
    def _publishes(cls, v: str) -> str:
        return river_subject(v)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not re.match(r"^/webhooks/[A-Za-z0-9_\-./]+$", v) or ".." in v:
            raise ValueError(f"'{v}' must be a path under /webhooks/, such as /webhooks/contacts")
        return v.rstrip("/")

    @model_validator(mode="before")
    @classmethod
    def _default_signature(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("signature") is None:
            data = {**data, "signature": "sha256" if data.get("secret") else "none"}
        return data

    @model_validator(mode="after")
    def _signature(self) -> SourceSpec:
        if self.signature is not SignatureKind.NONE and not (self.secret and self.secret.get_secret_value()):
            raise ValueError(f"signature '{self.signature}' needs a secret")
        return self


class DecomposerSpec(_Consuming):
    enabled: bool = True
    max_deliver: int = Field(10, ge=1)


Spec = TreeSpec | TreeHouseSpec | NimSpec | SourceSpec
SPEC_TYPES: dict[ComponentKind, type[_Spec]] = {
    ComponentKind.SOURCE: SourceSpec,
    ComponentKind.TREE: TreeSpec,
    ComponentKind.TREEHOUSE: TreeHouseSpec,
    ComponentKind.NIM: NimSpec,
}


class ForestConfig(_Spec):
    """A whole forest. `base_dir` anchors relative script and prompt paths."""

    base_dir: Path
    path: Path | None = None
    sources: dict[str, SourceSpec] = {}
    trees: dict[str, TreeSpec] = {}
    treehouses: dict[str, TreeHouseSpec] = {}
    nims: dict[str, NimSpec] = {}
    decomposer: DecomposerSpec = DecomposerSpec()

    def specs(self, kind: ComponentKind) -> dict[str, Any]:
        return dict(getattr(self, kind.plural))

    def with_spec(self, kind: ComponentKind, name: str, spec: Spec | None) -> ForestConfig:
        """A copy with `name` set to `spec` (or removed when spec is None)."""
        specs = self.specs(kind)
        if spec is None:
            specs.pop(name, None)
        else:
            specs[name] = spec
        return self.model_copy(update={kind.plural: specs})

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.base_dir / path)

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "forest config"


def component_label(kind: ComponentKind, name: str) -> str:
    return f"{kind.value} '{name}'"


def check_name(kind: ComponentKind, name: Any, file: str | None = None) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ForestConfigError(
            f"'{name}' is not a valid {kind.value} name (letters, digits, '_' and '-', at most 48)",
            file=file,
        )
    return name


def parse_spec(kind: ComponentKind, name: str, raw: Any, *, file: str | None = None) -> Spec:
    """Validate one component's mapping; errors name the file, component and field."""
    check_name(kind, name, file)
    label = component_label(kind, name)
    if isinstance(raw, BaseModel):
        raw = raw.model_dump(exclude_unset=True)
    if not isinstance(raw, dict):
        raise ForestConfigError("must be a mapping of settings", file=file, component=label)
    raw = dict(raw)
    raw.pop("name", None)  # the name is the key, as in the Go original
    try:
        return SPEC_TYPES[kind].model_validate(_expand_env(raw, file, label))  # type: ignore[return-value]
    except ValidationError as exc:
        raise _config_error(exc, file, label) from None


def _expand_env(raw: dict[str, Any], file: str | None, label: str) -> dict[str, Any]:
    """Expand ${VAR} in `secret` and in brain `base_url`/`model`/`system`."""

    def expand(value: Any, field: str) -> Any:
        if not isinstance(value, str) or "${" not in value:
            return value

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in os.environ:
                raise ForestConfigError(
                    f"environment variable {m.group(1)} is not set", file=file, component=label, field=field
                )
            return os.environ[m.group(1)]

        return _ENV_RE.sub(sub, value)

    if "secret" in raw:
        raw["secret"] = expand(raw["secret"], "secret")
    brain = raw.get("brain")
    if isinstance(brain, dict):
        raw["brain"] = {k: expand(v, f"brain.{k}") if k in ("base_url", "model", "system") else v
                        for k, v in brain.items()}
    return raw


def _config_error(exc: ValidationError, file: str | None, label: str) -> ForestConfigError:
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if not str(p).startswith(("function-", "tagged-union"))]
    # drop union branch names pydantic adds for the brain (e.g. brain.rules.rules -> brain.rules)
    if len(loc) >= 2 and loc[0] == "brain" and loc[1] in ("rules", "openai", "anthropic"):
        loc = [loc[0], *loc[2:]]
    field = ".".join(loc) or None
    msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
    if err.get("type") == "missing":
        msg = "is required"
    elif err.get("type") == "extra_forbidden":
        msg = "is not a known setting"
    elif err.get("type") == "union_tag_invalid":
        msg = "brain type must be one of rules, openai, anthropic"
    return ForestConfigError(msg, file=file, component=label, field=field)


_TOP_KEYS = {"sources", "trees", "treehouses", "nims", "decomposer"}


def parse_forest_config(data: Any, *, base_dir: Path, path: Path | None = None) -> ForestConfig:
    """Build a ForestConfig from already-parsed YAML (no files are read)."""
    file = str(path) if path else None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ForestConfigError("must be a mapping with trees, treehouses, nims and sources", file=file)
    unknown = sorted(set(map(str, data)) - _TOP_KEYS)
    if unknown:
        raise ForestConfigError(
            f"'{unknown[0]}' is not a known section (expected {', '.join(sorted(_TOP_KEYS))})", file=file
        )
    sections: dict[str, Any] = {}
    for kind in (ComponentKind.SOURCE, ComponentKind.TREE, ComponentKind.TREEHOUSE, ComponentKind.NIM):
        entries = data.get(kind.plural) or {}
        if not isinstance(entries, dict):
            raise ForestConfigError(f"section '{kind.plural}' must be a mapping of name: settings", file=file)
        sections[kind.plural] = {str(n): parse_spec(kind, str(n), raw, file=file) for n, raw in entries.items()}
    paths: dict[str, str] = {}
    for name, src in sections["sources"].items():
        if src.path in paths:
            raise ForestConfigError(
                f"path {src.path} is already used by source '{paths[src.path]}'",
                file=file, component=component_label(ComponentKind.SOURCE, name), field="path",
            )
        paths[src.path] = name
    try:
        decomposer = DecomposerSpec.model_validate(data.get("decomposer") or {})
    except ValidationError as exc:
        raise _config_error(exc, file, "decomposer") from None
    return ForestConfig(base_dir=base_dir, path=path, decomposer=decomposer, **sections)


def load_forest_config(path: str | os.PathLike[str], *, check: bool = True) -> ForestConfig:
    """Read and validate forest.yaml. With `check`, every script, prompt and brain is also
    compiled, so a bad Lua file or template is reported here, naming file and component."""
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
    cfg = parse_forest_config(data, base_dir=p.parent, path=p)
    if check:
        from nimsforest.forest.build import check_config

        check_config(cfg)
    return cfg


__all__ = [
    "ForestConfig",
    "TreeSpec",
    "TreeHouseSpec",
    "NimSpec",
    "SourceSpec",
    "DecomposerSpec",
    "LimitsSpec",
    "RulesBrainSpec",
    "OpenAIBrainSpec",
    "AnthropicBrainSpec",
    "HumusSpec",
    "Rule",
    "SignatureKind",
    "Spec",
    "SPEC_TYPES",
    "parse_spec",
    "parse_forest_config",
    "load_forest_config",
    "component_label",
]
