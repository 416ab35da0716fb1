"""The forest: River -> Tree -> Leaf on the Wind -> TreeHouse / Nim -> Humus ->
Decomposer -> Soil, on NATS JetStream. See docs/FOREST.md for the model and the delivery
guarantee of every hop.

Public API:
    Forest(nc, config, replicas=1, placement_tags=None)      the runtime (runtime.py)
    ForestConfig, load_forest_config(path)    forest.yaml, read and every script compiled
    read_forest_config(path), parse_forest_config(data, base_dir=...)   read or parse only
    ComponentKind, ComponentRef, ComponentState, ComponentStatus, ForestStatus, ReloadDiff,
    FlowReceipt
    Problem, ProblemKind, check_components(components)   typed problems, the one check
    ForestError, ForestConfigError, ComponentNotFound, FlowError
    DeadLetters (Forest.dead), DeadEntry, DeadLetter, DeadReason, DeadLetterMissing,
    ReplayReceipt, entry_json      the DEAD stream (dead.py)
    ReplayRange, ReplayDone, NothingToReplay      Forest.replay: one component re-fed
    demo_config_path(), load_demo_config()                   the demo forest
    tracing_from_env(env, service, node) -> Tracing, TraceContext, Carry   the trace context
"""

from __future__ import annotations

from pathlib import Path

from nimsforest.forest.build import build_component
from nimsforest.forest.config import (
    ForestConfig,
    check_name,
    parse_forest_config,
    parse_spec,
    read_forest_config,
)
from nimsforest.forest.dead import (
    DeadEntry,
    DeadLetter,
    DeadLetterMissing,
    DeadLetters,
    DeadReason,
    ReplayReceipt,
    entry_json,
)
from nimsforest.forest.errors import (
    ComponentNotFound,
    FlowError,
    ForestConfigError,
    ForestError,
)
from nimsforest.forest.loading import load_forest_config
from nimsforest.forest.model import (
    ComponentKind,
    ComponentRef,
    ComponentState,
    ComponentStatus,
    FlowReceipt,
    ForestStatus,
    ReloadDiff,
    component_label,
)
from nimsforest.forest.problems import Problem, ProblemKind, check_components
from nimsforest.forest.replay import NothingToReplay, ReplayDone, ReplayRange
from nimsforest.forest.runtime import Forest
from nimsforest.forest.specs import (
    MAX_TEXT,
    NAME_PATTERN,
    NAME_RE,
    SPEC_TYPES,
    USER_KINDS,
    ComponentSpec,
    Spec,
)
from nimsforest.forest.trace import Carry, TraceContext, Tracing, tracing_from_env


def demo_config_path() -> Path:
    """forest.yaml of the demo forest shipped with the package (nimsforest/demo/)."""
    return Path(__file__).resolve().parent.parent / "demo" / "forest.yaml"


def load_demo_config() -> ForestConfig:
    return load_forest_config(demo_config_path())


__all__ = [
    "Carry",
    "TraceContext",
    "Tracing",
    "tracing_from_env",
    "MAX_TEXT",
    "NAME_PATTERN",
    "NAME_RE",
    "SPEC_TYPES",
    "USER_KINDS",
    "ComponentSpec",
    "build_component",
    "check_name",
    "component_label",
    "parse_spec",
    "ComponentKind",
    "ComponentNotFound",
    "ComponentRef",
    "ComponentState",
    "ComponentStatus",
    "DeadEntry",
    "DeadLetter",
    "DeadLetterMissing",
    "DeadLetters",
    "DeadReason",
    "ReplayReceipt",
    "entry_json",
    "FlowError",
    "FlowReceipt",
    "Forest",
    "ForestConfig",
    "ForestConfigError",
    "ForestError",
    "ForestStatus",
    "Problem",
    "ProblemKind",
    "NothingToReplay",
    "ReloadDiff",
    "ReplayDone",
    "ReplayRange",
    "Spec",
    "check_components",
    "demo_config_path",
    "load_demo_config",
    "load_forest_config",
    "parse_forest_config",
    "read_forest_config",
]
