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

from nimsforest.durations import parse_duration
from nimsforest.forest.model import ComponentKind
from nimsforest.forest.subjects import check_subject, river_subject

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


ACK_WAIT = 5.0  # seconds


class _Delivery(_Spec):
    """Delivery settings of a durable consumer."""

    # short: a node that dies mid-way holds its events this long; slow work (an LLM call,
    # an output's retries) stays alive with in-progress acks every ack_wait / 3
    ack_wait: Duration = Field(ACK_WAIT, gt=0, description="e.g. 5s: how long a dead node's events wait")
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
    syntax: Literal["auto", "jinja", "go"] = Field(
        "auto", description="The prompt's template language; auto: Go when it looks like one "
                            "({{.score}}, {{range .signals}}), else Jinja2")
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
    ack_wait: Duration = Field(ACK_WAIT, gt=0)
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


def _http_url(v: str | None) -> str | None:
    if v is None:
        return None
    v = v.strip()
    if "${" not in v and not re.match(r"^https?://[^/\s]+", v):
        raise ValueError(f"'{v}' is not an http:// or https:// URL")
    return v


class SourceType(StrEnum):
    HTTP_WEBHOOK = "http_webhook"  # POST /webhooks/<path> -> the River
    SCHEDULE = "schedule"  # a payload on every tick (interval or cron), once per cluster
    HTTP_POLL = "http_poll"  # poll a URL; each item one River message; one poller at a time
    NATS = "nats"  # a core NATS subject bridged into the River
    TELEGRAM = "telegram"  # the Bot API webhook (secret-token header verified)


_SOURCE_TYPE_ALIASES = {"ceremony": "schedule"}  # the Go original's name


class CatchUp(StrEnum):
    SKIP = "skip"  # ticks missed while the whole cluster was down are not fired
    FIRE_ONE = "fire_one"  # the last missed tick is fired once at start


class SplitMode(StrEnum):
    ITEMS = "items"  # each item of the page is one River message
    PAGE = "page"  # the whole page is one River message


class CursorSpec(_Spec):
    """Where polling resumes: `extract` (a dot path such as `meta.next` or `$.meta.next`
    into the response, or `last.<field>` of the last item) is stored cluster-wide and sent
    as query parameter `param` on the next poll."""

    param: str = Field(min_length=1, max_length=128)
    extract: str = Field(min_length=1, max_length=256)
    initial: str | None = Field(None, max_length=1024, description="Sent before any is stored")
    store: str | None = Field(None, description="Accepted for the Go original; always KV")


class SourceSpec(ComponentSpec):
    """A way into the River. `type` decides which settings apply (the others must be left
    out); see docs/FOREST.md for each type's settings and guarantee."""

    kind = ComponentKind.SOURCE
    aliases = ("src",)
    type: SourceType = SourceType.HTTP_WEBHOOK
    path: Subject | None = Field(None, description="http_webhook, telegram: under /webhooks/")
    publishes: Subject = Field(description="A River subject")
    secret: SecretStr | None = Field(
        None, max_length=1024,
        description="http_webhook: the HMAC key; telegram: the secret token. Write ${VAR}",
    )
    # default: sha256 with a secret, none without
    signature: SignatureKind = SignatureKind.NONE
    headers: tuple[str, ...] = Field((), max_length=64, description="Headers copied in")
    tolerance: Duration = Field(300.0, gt=0, description="Stripe timestamp tolerance")
    # schedule, http_poll
    interval: Duration | None = Field(
        None, gt=0, description="schedule, http_poll: e.g. 30s, 1h (http_poll: 5m by default)")
    cron: str | None = Field(None, max_length=256, description="schedule: a cron expression (UTC)")
    payload: Any = Field(None, description="schedule: the JSON each tick puts in the River")
    catch_up: CatchUp = Field(CatchUp.SKIP, description="schedule: skip | fire_one")
    hz: int | None = Field(None, description="Accepted for the Go original's ceremony; unused")
    script: str | None = Field(None, description="Accepted for the Go original's ceremony; unused")
    # http_poll
    url: str | None = Field(None, max_length=2048, description="http_poll: the URL")
    method: Literal["GET", "POST"] = "GET"
    request_headers: dict[str, str] = Field(default_factory=dict,
                                            description="http_poll: sent with every poll")
    body: Any = Field(None, description="http_poll: a JSON body sent with every poll")
    timeout: Duration = Field(30.0, gt=0, description="http_poll: per request")
    cursor: CursorSpec | None = None
    items: str | None = Field(
        None, max_length=256,
        description="http_poll: a dot path to the list of items (default: the response if "
                    "it is a list, else the response as one item)",
    )
    split: SplitMode = SplitMode.ITEMS
    id_field: str = Field("id", max_length=128,
                          description="http_poll: the item field its idempotency key comes from")
    lease: Duration = Field(10.0, ge=1, le=300,
                            description="http_poll: another node takes over this long after "
                                        "the poller stops answering")
    # nats
    subject: Subject | None = Field(None, description="nats: the core subject (pattern) bridged")
    # telegram
    bot_token: SecretStr | None = Field(None, max_length=256,
                                        description="telegram: accepted for the Go original")
    secret_path: str | None = Field(None, description="Accepted for the Go original; unused")

    @field_serializer("secret", "bot_token", when_used="json")
    def _reveal(self, secret: SecretStr | None) -> str | None:
        """JSON carries the secret (the bucket must); SecretStr hides it everywhere else."""
        return secret.get_secret_value() if secret is not None else None

    @field_validator("publishes")
    @classmethod
    def _publishes(cls, v: str) -> str:
        return river_subject(v)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not re.match(r"^/webhooks/[A-Za-z0-9_\-./]+$", v) or ".." in v:
            raise ValueError(f"'{v}' must be a path under /webhooks/, such as /webhooks/contacts")
        return v.rstrip("/")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _http_url(v)

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str | None) -> str | None:
        return check_subject(v.strip(), pattern=True) if v is not None else None

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return None
        from croniter import croniter  # imported by the specs that have a cron only

        if not croniter.is_valid(v.strip()):
            raise ValueError(f"'{v}' is not a cron expression such as '0 * * * *'")
        return v.strip()

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            kind = data.get("type")
            if isinstance(kind, str) and kind in _SOURCE_TYPE_ALIASES:
                data = {**data, "type": _SOURCE_TYPE_ALIASES[kind]}
            if data.get("signature") is None:
                webhook = data.get("type", "http_webhook") == "http_webhook"
                data = {**data, "signature": "sha256" if webhook and data.get("secret") else "none"}
        return data

    @property
    def every(self) -> float:
        """How often a schedule or a poll runs (seconds)."""
        return self.interval if self.interval is not None else 300.0

    @model_validator(mode="after")
    def _settings(self) -> SourceSpec:
        t = self.type
        needs = {SourceType.HTTP_WEBHOOK: ("path",), SourceType.TELEGRAM: ("path",),
                 SourceType.SCHEDULE: (), SourceType.HTTP_POLL: ("url",),
                 SourceType.NATS: ("subject",)}[t]
        for f in needs:
            if getattr(self, f) is None:
                raise ValueError(f"{_a(t.value)} source needs '{f}'")
        allowed = _SOURCE_FIELDS[t] | _COMMON_SOURCE_FIELDS
        for f in sorted(self.model_fields_set - allowed):  # a stored spec repeats defaults
            if getattr(self, f) != type(self).model_fields[f].get_default(call_default_factory=True):
                raise ValueError(f"'{f}' is not a setting of {_a(t.value)} source")
        if t is SourceType.SCHEDULE:
            _exactly_one(self.interval, self.cron, "'interval' or 'cron'")
        if self.signature is not SignatureKind.NONE and t is not SourceType.HTTP_WEBHOOK:
            raise ValueError(f"{_a(t.value)} source takes no 'signature'")
        if self.signature is not SignatureKind.NONE and not (
            self.secret and self.secret.get_secret_value()
        ):
            raise ValueError(f"signature '{self.signature}' needs a secret")
        return self


def _a(word: str) -> str:
    """`a schedule`, `an http_poll`."""
    return ("an " if word[0] in "aeiou" or word.startswith("http") else "a ") + word


_COMMON_SOURCE_FIELDS = {"type", "publishes", "signature"}
_SOURCE_FIELDS: dict[SourceType, set[str]] = {
    SourceType.HTTP_WEBHOOK: {"path", "secret", "signature", "headers", "tolerance"},
    SourceType.TELEGRAM: {"path", "secret", "bot_token", "secret_path"},
    SourceType.SCHEDULE: {"interval", "cron", "payload", "catch_up", "hz", "script"},
    SourceType.HTTP_POLL: {"url", "method", "interval", "request_headers", "body", "timeout",
                           "cursor", "items", "split", "id_field", "lease"},
    SourceType.NATS: {"subject"},
}


class OutputType(StrEnum):
    HTTP = "http"  # POST/PUT the leaf (or a rendered body) to a URL
    SLACK = "slack"  # an incoming webhook: {"text": <rendered text>}
    TELEGRAM = "telegram"  # the Bot API's sendMessage, the chat id from the leaf
    EMAIL = "email"  # SMTP (STARTTLS or TLS, with auth)


class OutputSpec(_Consuming):
    """Sends each leaf on `subscribes` to the world (the Go original's songbird). One
    durable consumer shared by the cluster; an attempt that fails is retried with backoff
    (honouring Retry-After) until `max_deliver`, a 4xx other than 408/429 goes to DEAD at
    once. Templates are Jinja2 (sandboxed, the nims' variables: the leaf's data fields,
    `data`, `leaf`)."""

    kind = ComponentKind.OUTPUT
    aliases = ("songbird", "songbirds")
    type: OutputType = OutputType.HTTP
    subscribes: Subject = Field(description="A leaf subject or pattern")
    publishes: Subject = Field(
        "", description="Shown in status as where it sends (default: the type and host)"
    )
    url: str | None = Field(None, max_length=2048,
                            description="http: the URL; slack: the incoming webhook URL")
    method: Literal["POST", "PUT"] = "POST"
    body: str | None = Field(
        None, max_length=MAX_TEXT,
        description="http: a Jinja2 template of the body (default: the leaf as JSON)",
    )
    text: str | None = Field(
        None, max_length=MAX_TEXT,
        description="slack, telegram, email: a Jinja2 template of the message "
                    "(default: the subject and the data as JSON)",
    )
    # telegram
    token: SecretStr | None = Field(None, max_length=256,
                                    description="telegram: the bot token; write ${VAR}")
    chat_id: str = Field("{{ chat_id }}", max_length=1024,
                         description="telegram: a Jinja2 template of the chat id")
    base_url: str = Field("https://api.telegram.org", max_length=2048,
                          description="telegram: the Bot API's address")
    parse_mode: Literal["HTML", "MarkdownV2", "Markdown"] | None = None
    # email
    smtp_host: str | None = Field(None, max_length=255, description="email: the SMTP server")
    smtp_port: int | None = Field(None, ge=1, le=65535,
                                  description="email: default 587 (465 with tls)")
    starttls: bool = Field(True, description="email: upgrade the connection with STARTTLS "
                                             "(not with tls)")
    tls: bool = Field(False, description="email: TLS from the start (port 465)")
    verify_tls: bool = Field(True, description="email: check the server's certificate")
    username: str | None = Field(None, max_length=256, description="email: the SMTP login")
    password: SecretStr | None = Field(None, max_length=1024,
                                       description="email: the SMTP password; write ${VAR}")
    sender: str | None = Field(None, max_length=320, description="email: the From address")
    to: str | None = Field(None, max_length=4096,
                           description="email: a Jinja2 template of the recipients, comma separated")
    subject: str = Field("{{ leaf.subject }}", max_length=4096,
                         description="email: a Jinja2 template of the subject")
    content_type: str = Field("application/json", max_length=256)
    headers: dict[str, str] = Field(default_factory=dict, description="Request headers; ${VAR} expanded")
    secret: SecretStr | None = Field(
        None, max_length=1024,
        description="Signs the body: X-Signature-256: sha256=<hex HMAC-SHA256>; write ${VAR}",
    )
    signature_header: str = Field("X-Signature-256", max_length=128)
    timeout: Duration = Field(10.0, gt=0, description="Per request")
    backoff: Duration = Field(1.0, ge=0, description="First retry delay; doubles, at most 5m")
    concurrency: int = Field(4, ge=1, le=256, description="Requests in flight per node")
    rate: str | None = Field(None, max_length=64,
                             description="At most this many requests per node, e.g. 10/second, "
                                         "30/minute (Telegram and Slack limit senders)")

    @property
    def inflight(self) -> int:
        return 2 * self.concurrency

    @field_validator("rate")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        if v is None:
            return None
        from limits import parse as parse_rate  # imported by the specs that have a rate only

        try:
            parse_rate(v)
        except ValueError:
            raise ValueError(f"'{v}' is not a rate such as 10/second or 30/minute") from None
        return v.strip()

    @field_serializer("secret", "token", "password", when_used="json")
    def _reveal(self, secret: SecretStr | None) -> str | None:
        return secret.get_secret_value() if secret is not None else None

    @field_validator("subscribes")
    @classmethod
    def _subscribes(cls, v: str) -> str:
        return _leaf_pattern(v)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        return (_http_url(v) or v).rstrip("/")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _http_url(v)

    @model_validator(mode="before")
    @classmethod
    def _default_publishes(cls, data: Any) -> Any:
        if isinstance(data, dict):  # the Go original's songbird: listens, bot_token
            for old, new in (("listens", "subscribes"), ("bot_token", "token")):
                if old in data:
                    if new in data:
                        raise ValueError(f"give '{new}' or '{old}' (the same setting), not both")
                    data = {**{k: v for k, v in data.items() if k != old}, new: data[old]}
        if isinstance(data, dict) and not data.get("publishes"):
            where = {"telegram": data.get("base_url") or "https://api.telegram.org",
                     "email": data.get("smtp_host")}.get(str(data.get("type")), data.get("url"))
            host = re.sub(r"^https?://([^/]+).*$", r"\1", str(where or ""))
            data = {**data, "publishes": f"{data.get('type') or 'http'} {host}".strip()}
        return data

    @model_validator(mode="after")
    def _needs(self) -> OutputSpec:
        if self.type in (OutputType.HTTP, OutputType.SLACK) and self.url is None:
            raise ValueError(f"a {self.type.value} output needs a 'url'")
        if self.type is not OutputType.HTTP and self.body is not None:
            raise ValueError(f"a {self.type.value} output takes 'text', not 'body'")
        if self.type is OutputType.TELEGRAM and self.token is None:
            raise ValueError("a telegram output needs a 'token' (write ${VAR})")
        if self.type is OutputType.EMAIL:
            for f in ("smtp_host", "sender", "to"):
                if getattr(self, f) is None:
                    raise ValueError(f"an email output needs '{f}'")
            if (self.username is None) != (self.password is None):
                raise ValueError("give both 'username' and 'password', or neither")
        return self

    @property
    def port(self) -> int:
        return self.smtp_port or (465 if self.tls else 587)


class DecomposerSpec(_Delivery, _Inflight):
    enabled: bool = True
    max_deliver: int = Field(10, ge=1)


# The component kinds, in start order: the one registration of a kind.
COMPONENT_SPECS: tuple[type[ComponentSpec], ...] = (
    TreeSpec, TreeHouseSpec, NimSpec, OutputSpec, SourceSpec
)

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
    "OutputSpec",
    "OutputType",
    "RateLimitSpec",
    "Rule",
    "RulesBrainSpec",
    "SignatureKind",
    "Size",
    "CatchUp",
    "CursorSpec",
    "SourceSpec",
    "SourceType",
    "SplitMode",
    "Spec",
    "TreeHouseSpec",
    "TreeSpec",
    "parse_size",
]
