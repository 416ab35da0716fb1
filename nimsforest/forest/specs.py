"""The typed spec of each forest component, as written in forest.yaml (see config.py for
the file as a whole). Frozen pydantic models; unknown keys are errors."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from nimsforest.forest.model import ComponentKind
from nimsforest.forest.subjects import check_subject, river_subject
from nimsforest.settings import parse_duration

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$")
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


class _Bounded(_Consuming):
    max_inflight: int = Field(256, ge=1, le=10_000)


def _exactly_one(a: object, b: object, choices: str) -> None:
    if (a is None) == (b is None):
        raise ValueError(f"give exactly one of {choices}")


class _Scripted(_Bounded):
    script: Path | None = None  # a .lua file, relative to forest.yaml
    code: str | None = None  # or the Lua source inline
    limits: LimitsSpec = LimitsSpec()

    @model_validator(mode="after")
    def _one_source(self) -> _Scripted:
        _exactly_one(self.script, self.code, "'script' (a file) or 'code' (inline Lua)")
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
    RulesBrainSpec | OpenAIBrainSpec | AnthropicBrainSpec, Field(discriminator="type")
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
        _exactly_one(self.prompt, self.template, "'prompt' (a file) or 'template' (inline)")
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
        if self.signature is not SignatureKind.NONE and not (
            self.secret and self.secret.get_secret_value()
        ):
            raise ValueError(f"signature '{self.signature}' needs a secret")
        return self


class DecomposerSpec(_Bounded):
    enabled: bool = True
    max_deliver: int = Field(10, ge=1)


Spec = TreeSpec | TreeHouseSpec | NimSpec | SourceSpec
SPEC_TYPES: dict[ComponentKind, type[_Spec]] = {
    ComponentKind.SOURCE: SourceSpec,
    ComponentKind.TREE: TreeSpec,
    ComponentKind.TREEHOUSE: TreeHouseSpec,
    ComponentKind.NIM: NimSpec,
}


__all__ = [
    "NAME_RE",
    "SPEC_TYPES",
    "AnthropicBrainSpec",
    "BrainSpec",
    "DecomposerSpec",
    "Duration",
    "HumusSpec",
    "LimitsSpec",
    "NimSpec",
    "OpenAIBrainSpec",
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
