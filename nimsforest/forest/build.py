"""Turning a spec into a Component: every file is read and every script, template and
brain is compiled here, before anything runs, so errors surface as one ForestConfigError
naming the file, the component and the field (and nothing is half applied)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nats.js.api import DeliverPolicy

from nimsforest.forest.brains import BrainConfigError, build_brain
from nimsforest.forest.component import Component
from nimsforest.forest.config import (
    ForestConfig,
    NimSpec,
    SourceSpec,
    TreeHouseSpec,
    TreeSpec,
    parse_spec,
)
from nimsforest.forest.delivery import ConsumerSpec, Handler, Stats
from nimsforest.forest.errors import ForestConfigError
from nimsforest.forest.handlers import DecomposerHandler, NimHandler, TreeHandler, TreeHouseHandler
from nimsforest.forest.model import ComponentKind, ComponentRef
from nimsforest.forest.prompt import Prompt, PromptError
from nimsforest.forest.sandbox import LuaLimits, LuaSandbox, ScriptLoadError
from nimsforest.forest.soil import Soil
from nimsforest.forest.subjects import wind_subject
from nimsforest.streams import HUMUS, RIVER, WIND

DECOMPOSER_DURABLE = "decomposer"


def fingerprint(spec: Any, text: str | None) -> str:
    """What a component runs: its spec, the text of its script or prompt, and (for nims)
    the brain environment. Editing a file therefore counts as a change on reload."""
    h = hashlib.sha256(spec.model_dump_json().encode())
    if text is not None:
        h.update(text.encode())
    if isinstance(spec, NimSpec):
        h.update(
            json.dumps(
                sorted(
                    (k, v) for k, v in os.environ.items() if k.startswith(("OPENAI_", "ANTHROPIC_"))
                )
            ).encode()
        )
    return h.hexdigest()


def spec_fingerprint(cfg: ForestConfig, spec: Any) -> str:
    path = getattr(spec, "script", None) or getattr(spec, "prompt", None)
    text = None
    if path is not None:
        try:
            text = cfg.resolve(path).read_text()
        except (OSError, UnicodeDecodeError):
            text = "<unreadable>"
    return fingerprint(spec, text)


def durable_name(kind: ComponentKind, name: str) -> str:
    """The one durable consumer every node binds for this component."""
    return f"{kind.value}-{name}"


def _read(cfg: ForestConfig, path: Path, label: ComponentRef, field: str) -> str:
    full = cfg.resolve(path)
    try:
        return full.read_text()
    except FileNotFoundError:
        raise ForestConfigError(
            f"file {full} does not exist", file=cfg.label, component=label, field=field
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ForestConfigError(
            f"file {full} cannot be read: {exc}", file=cfg.label, component=label, field=field
        ) from None


def _consumer(
    stream: str, durable: str, subject: str, spec: Any, inflight: int, label: ComponentRef
) -> ConsumerSpec:
    """The durable consumer a component shares with its copies on every node."""
    return ConsumerSpec(
        stream,
        durable,
        subject,
        spec.ack_wait,
        spec.max_deliver,
        inflight,
        description=f"NimsForest {label}",
    )


def _sandbox(
    cfg: ForestConfig, kind: ComponentKind, name: str, spec: TreeSpec | TreeHouseSpec
) -> tuple[LuaSandbox, str | None]:
    label = ComponentRef(kind=kind, name=name)
    field = "script" if spec.script is not None else "code"
    if spec.script is not None:
        source, chunk = _read(cfg, spec.script, label, field), str(spec.script)
    else:
        source, chunk = spec.code or "", f"{kind.value}:{name}"
    limits = LuaLimits(
        instructions=spec.limits.instructions, seconds=spec.limits.time, memory=spec.limits.memory
    )
    lua_log = logging.getLogger(f"nimsforest.forest.lua.{name}")
    try:
        sandbox = LuaSandbox(
            source, chunk, limits, lambda text: lua_log.info("%s: %s", label, text)
        )
        return sandbox, (source if spec.script is not None else None)
    except ScriptLoadError as exc:
        raise ForestConfigError(str(exc), file=cfg.label, component=label, field=field) from None


def build_component(
    cfg: ForestConfig,
    kind: ComponentKind,
    name: str,
    spec: Any,
    env: Mapping[str, str] | None = None,
) -> Component:
    """Compile one component. `spec` may be a spec model or a plain mapping."""
    if not isinstance(spec, (TreeSpec, TreeHouseSpec, NimSpec, SourceSpec)) or not _kind_matches(
        kind, spec
    ):
        spec = parse_spec(kind, name, spec, file=cfg.label)
    label = ComponentRef(kind=kind, name=name)
    durable = durable_name(kind, name)
    stats = Stats()
    if isinstance(spec, SourceSpec):
        return Component(
            kind,
            name,
            spec,
            stats=stats,
            publishes=spec.publishes,
            fingerprint=fingerprint(spec, None),
        )
    if isinstance(spec, (TreeSpec, TreeHouseSpec)):
        # A Tree reads the River; a TreeHouse reads the Wind. Both run one Lua script.
        handler_cls: type[TreeHandler | TreeHouseHandler]
        if isinstance(spec, TreeSpec):
            stream, subject, handler_cls = RIVER.name, spec.watches, TreeHandler
        else:
            stream, handler_cls = WIND.name, TreeHouseHandler
            subject = wind_subject(spec.subscribes, pattern=True)
        cons = _consumer(stream, durable, subject, spec, spec.max_inflight, label)
        lua, text = _sandbox(cfg, kind, name, spec)
        handler: Handler = handler_cls(name, durable, spec.publishes, lua, stats)
        return Component(
            kind,
            name,
            spec,
            consumer=cons,
            handler=handler,
            stats=stats,
            publishes=spec.publishes,
            fingerprint=fingerprint(spec, text),
        )
    assert isinstance(spec, NimSpec)
    field = "prompt" if spec.prompt is not None else "template"
    text = (
        _read(cfg, spec.prompt, label, field) if spec.prompt is not None else (spec.template or "")
    )
    try:
        prompt = Prompt(text, str(spec.prompt) if spec.prompt is not None else f"{label} template")
    except PromptError as exc:
        raise ForestConfigError(str(exc), file=cfg.label, component=label, field=field) from None
    try:
        brain = build_brain(spec.brain, prompt, label=str(label), env=os.environ if env is None else env)
    except BrainConfigError as exc:
        raise ForestConfigError(
            str(exc), file=cfg.label, component=label, field=exc.field
        ) from None
    subject = wind_subject(spec.subscribes, pattern=True)
    cons = _consumer(WIND.name, durable, subject, spec, spec.inflight, label)
    handler = NimHandler(name, durable, spec.publishes, prompt, brain, spec.humus, stats)
    return Component(
        kind,
        name,
        spec,
        consumer=cons,
        handler=handler,
        stats=stats,
        publishes=spec.publishes,
        closers=(brain.aclose,),
        fingerprint=fingerprint(spec, text if spec.prompt is not None else None),
    )


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


def _kind_matches(kind: ComponentKind, spec: Any) -> bool:
    return {
        ComponentKind.SOURCE: SourceSpec,
        ComponentKind.TREE: TreeSpec,
        ComponentKind.TREEHOUSE: TreeHouseSpec,
        ComponentKind.NIM: NimSpec,
    }.get(kind) is type(spec)


def check_config(cfg: ForestConfig, env: Mapping[str, str] | None = None) -> None:
    """Compile every component of `cfg`; raise the first ForestConfigError."""
    for kind in (
        ComponentKind.SOURCE,
        ComponentKind.TREE,
        ComponentKind.TREEHOUSE,
        ComponentKind.NIM,
    ):
        for name, spec in cfg.specs(kind).items():
            build_component(cfg, kind, name, spec, env)


__all__ = [
    "DECOMPOSER_DURABLE",
    "build_component",
    "build_decomposer",
    "check_config",
    "durable_name",
    "fingerprint",
    "spec_fingerprint",
]
