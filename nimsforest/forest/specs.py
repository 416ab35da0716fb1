"""The one typed model of each forest component kind, as written in forest.yaml (see
config.py for the file as a whole), stored in the control plane's bucket and taken by
the management API (whose bodies are derived from these models: control/_schemas.py).
Frozen pydantic models; unknown keys are errors.

A kind is its spec class here (with `kind`, its `aliases` and its `file_fields`), its
handler (handlers.py) and its builder (build.py); `COMPONENT_SPECS` below is where a kind
is registered, in start order. `${VAR}` in a secret or a brain's base_url, model and
system is kept as written and expanded by each node when it builds the component.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_serializer,
    field_validator,
    model_validator,
)

from nimsforest.forest.model import ComponentKind
from nimsforest.forest.subjects import check_subject, river_subject
from nimsforest.settings import parse_duration

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$"  # a component's name
NAME_RE = re.compile(NAME_PATTERN)
MAX_TEXT = 256 * 1024  # a script or prompt, inline
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*$", re.IGNORECASE)


def parse_size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"'{value}' is not a size such as 64MB")
    return int(
        float(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]
    )


Duration = Annotated[
    float, BeforeValidator(parse_duration, json_schema_input_type=float | str)
]  # seconds, or 30s, 5m, 250ms
Size = Annotated[int, BeforeValidator(parse_size, json_schema_input_type=int | str)]  # 64MB


def _leaf_subject(v: str) -> str:
    return check_subject(v.strip())


def _leaf_pattern(v: str) -> str:
    return check_subject(v.strip(), pattern=True)


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


Subject = Annotated[str, Field(min_length=1, max_length=256)]


class ComponentSpec(_Spec):
    """What every component kind's spec declares about itself."""

    kind: ClassVar[ComponentKind]
    aliases: ClassVar[tuple[str, ...]] = ()  # other names of the kind (CLI, API, NATS)
    # a field naming a file -> the field that carries its content inline: forest.yaml may
    # name a file; the bucket and the API carry the content
    file_fields: ClassVar[dict[str, str]] = {}
    publishes: Subject


class LimitsSpec(_Spec):
    instructions: int = Field(10_000_000, ge=10_000)
    time: Duration = Field(1.0, gt=0)
    memory: Size = Field(64 * 1024 * 1024, ge=1024 * 1024)


class _Delivery(_Spec):
    """Delivery settings of a durable consumer."""

    ack_wait: Duration = Field(30.0, gt=0, description="e.g. 30s (nims: 60s)")
    max_deliver: int = Field(5, ge=1, le=1000, description="Attempts per event")


class _Inflight(_Spec):
    max_inflight: int = Field(256, ge=1, le=10_000, description="Events in flight per node")


class _Consuming(ComponentSpec, _Delivery):
    """A component with a durable consumer shared by every node."""


class _Bounded(_Consuming, _Inflight):
    pass


def _exactly_one(a: object, b: object, choices: str) -> None:
    if (a is None) == (b is None):
        raise ValueError(f"give exactly one of {choices}")


class _Scripted(_Bounded):
    file_fields: ClassVar[dict[str, str]] = {"script": "code"}
    script: Path | None = Field(None, description="A .lua file, relative to forest.yaml")
    code: str | None = Field(None, max_length=MAX_TEXT, description="The Lua source inline")
    limits: LimitsSpec = LimitsSpec()

    @model_validator(mode="after")
    def _one_source(self) -> _Scripted:
        _exactly_one(self.script, self.code, "'script' (a file) or 'code' (inline Lua)")
        return self


class TreeSpec(_Scripted):
    kind = ComponentKind.TREE
    watches: Subject = Field(description="A River subject or pattern")
    publishes: Subject = Field(description="A leaf subject")

    @field_validator("watches")
    @classmethod
    def _watches(cls, v: str) -> str:
        return river_subject(v, pattern=True)

    @field_validator("publishes")
    @classmethod
    def _publishes(cls, v: str) -> str:
        return _leaf_subject(v)


class TreeHouseSpec(_Scripted):
    kind = ComponentKind.TREEHOUSE
    aliases = ("th",)
    subscribes: Subject = Field(description="A leaf subject or pattern")
    publishes: Subject = Field(description="A leaf subject")

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


class RateLimitSpec(_Spec):
    """A brain's quota for the whole cluster: requests and/or tokens per `per`."""

    requests: int | None = Field(None, ge=1)
    tokens: int | None = Field(None, ge=1)
    per: Duration = Field(60.0, gt=0, le=24 * 3600)

    @model_validator(mode="after")
    def _something(self) -> RateLimitSpec:
        if self.requests is None and self.tokens is None:
            raise ValueError("give requests, tokens or both")
        return self


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
    # prices per million tokens (in any currency), for the nim's cost in /metrics
    price_prompt: float = Field(0.0, ge=0)
    price_completion: float = Field(0.0, ge=0)
    # shared by every node and nim asking the same endpoint, model and key (KV NIMRATE)
    rate_limit: RateLimitSpec | None = None


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


class OllamaBrainSpec(_HttpBrain):
    """Ollama's own chat API (POST /api/chat): a nim's output_schema goes as its `format`.
    Defaults: OLLAMA_HOST (http://localhost:11434), OLLAMA_MODEL (llama3.2); no key."""

    type: Literal["ollama"]
    json_mode: bool = False  # send format "json" when there is no output_schema


BrainSpec = Annotated[
    RulesBrainSpec | OpenAIBrainSpec | AnthropicBrainSpec | OllamaBrainSpec,
    Field(discriminator="type"),
]


def _brain_shorthand(v: Any) -> Any:
    return {"type": v} if isinstance(v, str) else v


class HumusSpec(_Spec):
    """Which state change a nim writes to Humus for each output."""

    enabled: bool = True
    entity_fields: tuple[str, ...] = ("id", "contact_id", "entity_id")  # first string found
    action: Literal["create", "update", "delete"] = "update"


class NimSpec(_Consuming):
    kind = ComponentKind.NIM
    file_fields: ClassVar[dict[str, str]] = {"prompt": "template"}
    subscribes: Subject = Field(description="A leaf subject or pattern")
    publishes: Subject = Field(description="A leaf subject; may hold {field} placeholders")
    prompt: Path | None = Field(None, description="A Jinja2 template file, relative to forest.yaml")
    template: str | None = Field(None, max_length=MAX_TEXT, description="The template inline")
    brain: Annotated[BrainSpec, BeforeValidator(_brain_shorthand)] = RulesBrainSpec()
    # the brains asked, in order, when the one before cannot answer (e.g. a local Ollama,
    # then OpenAI, then rules); a brain that failed `fallback_after` decisions in a row is
    # skipped for `cooldown`
    fallback: tuple[Annotated[BrainSpec, BeforeValidator(_brain_shorthand)], ...] = Field(
        (), max_length=8
    )
    fallback_after: int = Field(3, ge=1, le=100)
    cooldown: Duration = Field(60.0, ge=0)
    # a JSON Schema the output must match: sent to the brain when it takes one, always
    # checked here; an answer that does not match is asked again with the error, up to
    # `schema_retries` times, then the event is dead with the answer kept
    output_schema: dict[str, Any] | None = None
    schema_retries: int = Field(2, ge=0, le=10)
    # the whole decision (every brain, retry and schema retry) within this, else it fails
    decision_timeout: Duration | None = Field(None, gt=0)
    # answers of HTTP brains kept this long in the KV bucket NIMCACHE, shared by the
    # cluster, keyed by brain, model, prompt and schema (off by default; at most 7 days)
    cache: Duration | None = Field(None, gt=0, le=7 * 24 * 3600)
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
        if isinstance(self.brain, RulesBrainSpec) and not self.fallback:
            return 256
        return 2 * max(getattr(b, "concurrency", 4) for b in self.chain)

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
        _exactly_one(self.prompt, self.template, "'prompt' (a file) or 'template' (inline)")
        return self

    @field_validator("output_schema")
    @classmethod
    def _schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            import jsonschema  # only forests that give a schema pay for the import

            try:
                jsonschema.validators.validator_for(v).check_schema(v)
            except jsonschema.SchemaError as exc:
                where = "/".join(str(p) for p in exc.path)
                raise ValueError(f"is not a valid JSON Schema{' at ' + where if where else ''}: "
                                 f"{exc.message}") from None
        return v

    @property
    def chain(
        self,
    ) -> tuple[RulesBrainSpec | OpenAIBrainSpec | AnthropicBrainSpec | OllamaBrainSpec, ...]:
        """The brains asked in order: `brain`, then `fallback`."""
        return (self.brain, *self.fallback)


class SignatureKind(StrEnum):
    SHA256 = "sha256"  # X-Signature-256: hex HMAC-SHA256 of the body (sha256= prefix allowed)
    GITHUB = "github"  # X-Hub-Signature-256: sha256=<hex>
    STRIPE = "stripe"  # Stripe-Signature: t=<unix>,v1=<hex of HMAC(t + "." + body)>
    NONE = "none"


class SourceSpec(ComponentSpec):
    kind = ComponentKind.SOURCE
    aliases = ("src",)
    type: Literal["http_webhook"] = "http_webhook"
    path: Subject = Field(description="Under /webhooks/")
    publishes: Subject = Field(description="A River subject")
    secret: SecretStr | None = Field(
        None, max_length=1024, description="Write ${VAR} to keep the secret out of the bucket"
    )
    # default: sha256 with a secret, none without
    signature: SignatureKind = SignatureKind.NONE
    headers: tuple[str, ...] = Field((), max_length=64, description="Headers copied in")
    tolerance: Duration = Field(300.0, gt=0, description="Stripe timestamp tolerance")

    @field_serializer("secret", when_used="json")
    def _reveal(self, secret: SecretStr | None) -> str | None:
        """JSON carries the secret (the bucket must); SecretStr hides it everywhere else."""
        return secret.get_secret_value() if secret is not None else None

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
        if self.signature is not SignatureKind.NONE and not (
            self.secret and self.secret.get_secret_value()
        ):
            raise ValueError(f"signature '{self.signature}' needs a secret")
        return self


class DecomposerSpec(_Delivery, _Inflight):
    enabled: bool = True
    max_deliver: int = Field(10, ge=1)


# The component kinds, in start order: the one registration of a kind.
COMPONENT_SPECS: tuple[type[ComponentSpec], ...] = (TreeSpec, TreeHouseSpec, NimSpec, SourceSpec)

Spec = ComponentSpec  # any component's spec
SPEC_TYPES: dict[ComponentKind, type[ComponentSpec]] = {s.kind: s for s in COMPONENT_SPECS}
USER_KINDS: tuple[ComponentKind, ...] = tuple(SPEC_TYPES)  # declared in forest.yaml


__all__ = [
    "COMPONENT_SPECS",
    "MAX_TEXT",
    "NAME_PATTERN",
    "NAME_RE",
    "SPEC_TYPES",
    "USER_KINDS",
    "ComponentSpec",
    "Subject",
    "AnthropicBrainSpec",
    "BrainSpec",
    "DecomposerSpec",
    "Duration",
    "HumusSpec",
    "LimitsSpec",
    "NimSpec",
    "OllamaBrainSpec",
    "OpenAIBrainSpec",
    "RateLimitSpec",
    "Rule",
    "RulesBrainSpec",
    "SignatureKind",
    "Size",
    "SourceSpec",
    "Spec",
    "TreeHouseSpec",
    "TreeSpec",
    "parse_size",
]
