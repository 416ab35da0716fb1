"""Turning a spec into a Component: every file is read, every `${VAR}` expanded and every
script, template and brain compiled here, before anything runs, so errors surface as one
ForestConfigError naming the file, the component and the field (and nothing is half
applied).

Each kind has one builder, registered with `@builder.register` for its spec class; a
kind without one is refused when it is built (tests/forest/test_kinds.py checks every
registered kind has one).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nats.js.api import DeliverPolicy
from pydantic import BaseModel, ValidationError

from nimsforest.forest.brains import BrainConfigError, MissingKey, build_brain
from nimsforest.forest.component import Component
from nimsforest.forest.config import ForestConfig, config_error
from nimsforest.forest.decide import Contract, Decider
from nimsforest.forest.delivery import ConsumerSpec, Handler, Stats
from nimsforest.forest.errors import ForestConfigError, MissingVariable
from nimsforest.forest.gotemplate import (
    GoTemplateError,
    go_environment,
    looks_like_go,
    translate,
)
from nimsforest.forest.handlers import DecomposerHandler, NimHandler, TreeHandler, TreeHouseHandler
from nimsforest.forest.model import ComponentKind, ComponentRef
from nimsforest.forest.prompt import Prompt, PromptError
from nimsforest.forest.sandbox import LuaLimits, LuaSandbox, ScriptLoadError
from nimsforest.forest.soil import Soil
from nimsforest.forest.specs import (
    AnthropicBrainSpec,
    ComponentSpec,
    NimSpec,
    OpenAIBrainSpec,
    OutputSpec,
    RulesBrainSpec,
    SourceSpec,
    SourceType,
    TreeHouseSpec,
    TreeSpec,
    _HttpBrain,
)
from nimsforest.forest.subjects import wind_subject
from nimsforest.streams import HUMUS, RIVER, WIND

DECOMPOSER_DURABLE = "decomposer"
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class BuildContext:
    """What building one component needs besides its spec."""

    cfg: ForestConfig  # resolves relative files; names the file in errors
    ref: ComponentRef
    env: Mapping[str, str]

    @property
    def durable(self) -> str:
        return durable_name(self.ref.kind, self.ref.name)

    def error(self, message: str, field: str | None = None,
              line: int | None = None) -> ForestConfigError:
        return ForestConfigError(message, file=self.cfg.label, component=self.ref, field=field,
                                 line=line)


# --- ${VAR} ----------------------------------------------------------------------------------
def expand_env(spec: ComponentSpec, ref: ComponentRef, env: Mapping[str, str],
               file: str | None = None) -> ComponentSpec:
    """`spec` with `${VAR}` expanded from `env` in a source's secret and in a brain's
    base_url, model and system; a variable that is not set is a ForestConfigError."""

    def expand(value: str, field: str) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in env:
                raise MissingVariable(m.group(1), file=file, component=ref, field=field)
            return env[m.group(1)]

        return _ENV_RE.sub(sub, value)

    if isinstance(spec, SourceSpec):
        changes: dict[str, Any] = {}
        for f in ("secret", "bot_token"):
            value = getattr(spec, f)
            if value is not None and "${" in (raw := value.get_secret_value()):
                changes[f] = expand(raw, f)
        if spec.url and "${" in spec.url:
            changes["url"] = expand(spec.url, "url")
        if any("${" in v for v in spec.request_headers.values()):
            changes["request_headers"] = {k: expand(v, f"request_headers.{k}")
                                          for k, v in spec.request_headers.items()}
        return _revalidate(spec, changes, ref, file) if changes else spec
    if isinstance(spec, OutputSpec):
        changes = {}
        if spec.url and "${" in spec.url:
            changes["url"] = expand(spec.url, "url")
        for f in ("secret", "token", "password"):
            value = getattr(spec, f)
            if value is not None and "${" in (raw := value.get_secret_value()):
                changes[f] = expand(raw, f)
        if any("${" in v for v in spec.headers.values()):
            changes["headers"] = {k: expand(v, f"headers.{k}") for k, v in spec.headers.items()}
        return _revalidate(spec, changes, ref, file) if changes else spec
    if isinstance(spec, NimSpec):
        def expanded(brain: Any, prefix: str) -> Any:
            if not isinstance(brain, _HttpBrain):
                return brain
            changes = {
                f: expand(v, f"{prefix}.{f}")
                for f in ("base_url", "model", "system")
                if isinstance(v := getattr(brain, f), str) and "${" in v
            }
            return _revalidate(brain, changes, ref, file) if changes else brain

        brain = expanded(spec.brain, "brain")
        fallback = tuple(expanded(b, f"fallback.{i}") for i, b in enumerate(spec.fallback))
        if brain is not spec.brain or fallback != spec.fallback:
            return spec.model_copy(update={"brain": brain, "fallback": fallback})
    return spec


M = TypeVar("M", bound=BaseModel)


def _revalidate(model: M, changes: dict[str, Any], ref: ComponentRef, file: str | None) -> M:
    try:
        return type(model).model_validate({**model.model_dump(), **changes})
    except ValidationError as exc:
        raise config_error(exc, file, ref) from None


# --- what a component runs -------------------------------------------------------------------
def fingerprint(spec: ComponentSpec, text: str | None) -> str:
    """What a component runs: its spec (`${VAR}` expanded), the text of its script or
    prompt, and (for nims) the brain environment. Editing a file, or a variable it names,
    therefore counts as a change on reload."""
    h = hashlib.sha256(spec.model_dump_json().encode())
    if text is not None:
        h.update(text.encode())
    if isinstance(spec, NimSpec):
        brain_env = sorted(
            (k, v) for k, v in os.environ.items() if k.startswith(("OPENAI_", "ANTHROPIC_", "OLLAMA_"))
        )
        h.update(json.dumps(brain_env).encode())
    return h.hexdigest()


def spec_fingerprint(cfg: ForestConfig, kind: ComponentKind, name: str, spec: ComponentSpec,
                     env: Mapping[str, str] | None = None) -> str:
    """The fingerprint `spec` would have once built (its files read now)."""
    ref = ComponentRef(kind=kind, name=name)
    try:
        spec = expand_env(spec, ref, os.environ if env is None else env)
    except ForestConfigError:
        return "<unresolved>"
    text = None
    for path_field in type(spec).file_fields:
        path = getattr(spec, path_field)
        if path is not None:
            try:
                text = cfg.resolve(path).read_text()
            except (OSError, UnicodeDecodeError):
                text = "<unreadable>"
    return fingerprint(spec, text)


def durable_name(kind: ComponentKind, name: str) -> str:
    """The one durable consumer every node binds for this component."""
    return f"{kind.value}-{name}"


def _read(ctx: BuildContext, path: Path, field: str) -> str:
    full = ctx.cfg.resolve(path)
    try:
        return full.read_text()
    except FileNotFoundError:
        raise ctx.error(f"file {full} does not exist", field) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ctx.error(f"file {full} cannot be read: {exc}", field) from None


def _consumer(
    ctx: BuildContext, stream: str, subject: str, spec: Any, inflight: int
) -> ConsumerSpec:
    """The durable consumer a component shares with its copies on every node."""
    return ConsumerSpec(stream, ctx.durable, subject, spec.ack_wait, spec.max_deliver, inflight,
                        description=f"NimsForest {ctx.ref}")


def _sandbox(ctx: BuildContext, spec: TreeSpec | TreeHouseSpec) -> tuple[LuaSandbox, str | None]:
    field = "script" if spec.script is not None else "code"
    if spec.script is not None:
        source, chunk = _read(ctx, spec.script, field), str(spec.script)
    else:
        source, chunk = spec.code or "", ctx.ref.token
    limits = LuaLimits(
        instructions=spec.limits.instructions, seconds=spec.limits.time, memory=spec.limits.memory
    )
    lua_log = logging.getLogger(f"nimsforest.forest.lua.{ctx.ref.name}")
    label = str(ctx.ref)
    try:
        sandbox = LuaSandbox(source, chunk, limits, lambda text: lua_log.info("%s: %s", label, text))
        return sandbox, (source if spec.script is not None else None)
    except ScriptLoadError as exc:
        raise ctx.error(str(exc), field, exc.line) from None


def _source_loop(name: str, spec: SourceSpec, stats: Stats) -> Any:
    """The loop of a source that runs (None for those the API hands requests to). The
    loops and outputs (and the HTTP client they bring) are imported when such a component
    is built, so that `nimsforest lint` and `nimsforest test` of a forest without them
    start quickly."""
    if spec.type in (SourceType.HTTP_WEBHOOK, SourceType.TELEGRAM):
        return None
    from nimsforest.forest.sources import source_loop

    return source_loop(name, spec, stats)


# --- one builder per kind --------------------------------------------------------------------
@functools.singledispatch
def builder(spec: ComponentSpec, ctx: BuildContext) -> Component:
    raise ctx.error(f"there is no builder for {type(spec).__name__}")


@builder.register
def _source(spec: SourceSpec, ctx: BuildContext) -> Component:
    """A webhook source is requests the API hands over; the others run a loop."""
    stats = Stats()
    return Component(ctx.ref.kind, ctx.ref.name, spec, publishes=spec.publishes, stats=stats,
                     fingerprint=fingerprint(spec, None),
                     loop=_source_loop(ctx.ref.name, spec, stats))


@builder.register
def _tree(spec: TreeSpec, ctx: BuildContext) -> Component:
    """A Tree reads the River and runs one Lua script."""
    return _lua_component(spec, ctx, RIVER.name, spec.watches, TreeHandler)


@builder.register
def _treehouse(spec: TreeHouseSpec, ctx: BuildContext) -> Component:
    """A TreeHouse reads the Wind and runs one Lua script."""
    subject = wind_subject(spec.subscribes, pattern=True)
    return _lua_component(spec, ctx, WIND.name, subject, TreeHouseHandler)


def _lua_component(spec: TreeSpec | TreeHouseSpec, ctx: BuildContext, stream: str, subject: str,
                   handler_cls: type[TreeHandler | TreeHouseHandler]) -> Component:
    stats = Stats()
    lua, text = _sandbox(ctx, spec)
    handler: Handler = handler_cls(ctx.ref.name, ctx.durable, spec.publishes, lua, stats)
    return Component(
        ctx.ref.kind, ctx.ref.name, spec,
        consumer=_consumer(ctx, stream, subject, spec, spec.max_inflight),
        handler=handler, stats=stats, publishes=spec.publishes,
        fingerprint=fingerprint(spec, text),
    )


@builder.register
def _nim(spec: NimSpec, ctx: BuildContext) -> Component:
    field = "prompt" if spec.prompt is not None else "template"
    text = _read(ctx, spec.prompt, field) if spec.prompt is not None else (spec.template or "")
    name = str(spec.prompt) if spec.prompt is not None else f"{ctx.ref} template"
    try:
        if spec.syntax == "go" or (spec.syntax == "auto" and looks_like_go(text)):
            prompt = Prompt(translate(text), name, go_environment())
        else:
            prompt = Prompt(text, name)
    except GoTemplateError as exc:
        raise ctx.error(f"{name} (a Go template) {exc}", field) from None
    except PromptError as exc:
        raise ctx.error(str(exc), field, exc.line) from None
    brains = []
    for i, brain_spec in enumerate((_brain_spec(spec, prompt, ctx.env), *spec.fallback)):
        prefix = "brain" if i == 0 else f"fallback.{i - 1}"
        try:
            brains.append(build_brain(brain_spec, prompt, label=str(ctx.ref), env=ctx.env))
        except MissingKey as exc:
            raise MissingVariable(exc.variable, file=ctx.cfg.label, component=ctx.ref,
                                  field=exc.field.replace("brain", prefix, 1)) from None
        except BrainConfigError as exc:
            raise ctx.error(str(exc), exc.field.replace("brain", prefix, 1)) from None
    stats = Stats()
    contract = Contract(
        schema=spec.output_schema, schema_retries=spec.schema_retries,
        timeout=spec.decision_timeout, fallback_after=spec.fallback_after,
        cooldown=spec.cooldown, cache_ttl=spec.cache,
    )
    decider = Decider(ctx.ref.name, brains, contract, stats)
    subject = wind_subject(spec.subscribes, pattern=True)
    handler = NimHandler(ctx.ref.name, ctx.durable, spec.publishes, prompt, decider, spec.humus,
                         stats)
    return Component(
        ctx.ref.kind, ctx.ref.name, spec,
        consumer=_consumer(ctx, WIND.name, subject, spec, spec.inflight),
        handler=handler, stats=stats, publishes=spec.publishes,
        closers=tuple(b.aclose for b in brains),
        fingerprint=fingerprint(spec, text if spec.prompt is not None else None),
    )


@builder.register
def _output(spec: OutputSpec, ctx: BuildContext) -> Component:
    """An output reads the Wind and sends each leaf to the world."""
    templates: dict[str, Prompt | None] = {}
    from nimsforest.forest.outputs import OutputHandler, template_fields  # see _source_loop

    for field in template_fields(spec):
        text = getattr(spec, field)
        try:
            templates[field] = Prompt(text, f"{ctx.ref} {field}") if text is not None else None
        except PromptError as exc:
            raise ctx.error(str(exc), field) from None
    handler = OutputHandler(ctx.ref.name, ctx.durable, spec, templates)
    subject = wind_subject(spec.subscribes, pattern=True)
    return Component(
        ctx.ref.kind, ctx.ref.name, spec,
        consumer=_consumer(ctx, WIND.name, subject, spec, spec.inflight),
        handler=handler, stats=Stats(), publishes=spec.publishes, closers=(handler.aclose,),
        fingerprint=fingerprint(spec, None),
    )


def _brain_spec(spec: NimSpec, prompt: Prompt, env: Mapping[str, str]) -> Any:
    """The nim's brain. A rules brain with no rules anywhere (the Go original's nims name
    no brain) is, as the Go original chose: anthropic when ANTHROPIC_API_KEY is set, else
    openai when OPENAI_API_KEY is set; otherwise it stays (and says it needs rules)."""
    brain = spec.brain
    if not isinstance(brain, RulesBrainSpec) or brain.rules or prompt.front.get("rules"):
        return brain
    if env.get("ANTHROPIC_API_KEY"):
        return AnthropicBrainSpec(type="anthropic")
    if env.get("OPENAI_API_KEY"):
        return OpenAIBrainSpec(type="openai")
    return brain


def build_component(
    cfg: ForestConfig,
    kind: ComponentKind,
    name: str,
    spec: ComponentSpec,
    env: Mapping[str, str] | None = None,
) -> Component:
    """Compile one component (its `${VAR}` expanded from `env`, os.environ by default)."""
    ref = ComponentRef(kind=kind, name=name)
    env = os.environ if env is None else env
    if spec.kind is not kind:
        raise ForestConfigError(f"a {spec.kind.value} spec is not a {kind.value}",
                                file=cfg.label, component=ref)
    ctx = BuildContext(cfg, ref, env)
    return builder(expand_env(spec, ref, env, cfg.label), ctx)


def build_decomposer(cfg: ForestConfig, soil: Soil) -> Component:
    d = cfg.decomposer
    stats = Stats()
    cons = ConsumerSpec(
        HUMUS.name,
        DECOMPOSER_DURABLE,
        "humus.>",
        d.ack_wait,
        d.max_deliver,
        d.max_inflight,
        deliver_policy=DeliverPolicy.ALL,
        description="NimsForest decomposer: Humus -> Soil",
    )
    return Component(
        ComponentKind.DECOMPOSER,
        DECOMPOSER_DURABLE,
        d,
        consumer=cons,
        handler=DecomposerHandler(soil, stats),
        stats=stats,
        publishes="$KV.SOIL.>",
    )


def check_config(cfg: ForestConfig, env: Mapping[str, str] | None = None) -> None:
    """Compile every component of `cfg`; raise the first ForestConfigError."""
    for kind, specs in cfg.components.items():
        for name, spec in specs.items():
            build_component(cfg, kind, name, spec, env)


__all__ = [
    "DECOMPOSER_DURABLE",
    "BuildContext",
    "build_component",
    "build_decomposer",
    "builder",
    "check_config",
    "durable_name",
    "expand_env",
    "fingerprint",
    "spec_fingerprint",
]
