"""plan(desired, running) on frozen inputs: what restarts, starts, stops, keeps its pid."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from nimsforest.stack import (
    Availability,
    Condition,
    Desired,
    GeneratedFile,
    Plan,
    ServiceSpec,
    Shutdown,
    plan,
)


def spec(name: str, *deps: tuple[str, Condition], argv: tuple[str, ...] = ("run",),
         config: str | None = None) -> ServiceSpec:
    return ServiceSpec(
        name=name, argv=argv, env=(), ports=(), readiness=None, liveness=None,
        depends_on=tuple(deps), availability=Availability(), shutdown=Shutdown(),
        config_file=GeneratedFile(Path(f"/s/{name}.json"), config) if config is not None else None,
        reload_url="http://127.0.0.1:2019/load" if config is not None else None,
    )


NODE = spec("node")
INIT = spec("init")
PB = spec("pb", ("node", Condition.HEALTHY), ("init", Condition.COMPLETED_SUCCESSFULLY))
CADDY = spec("caddy", ("pb", Condition.HEALTHY), config='{"routes": 1}')
STACK = Desired((NODE, INIT, PB, CADDY))
RUNNING = {s.name: s for s in STACK.services}
ORDER = STACK.names()


def test_nothing_changed_keeps_everything() -> None:
    p = plan(STACK, RUNNING, ORDER)
    assert p == Plan(keep=("node", "init", "pb", "caddy"))
    assert p.changes_nothing and p.describe() == "nothing to change"


def test_nothing_running_starts_everything_in_dependency_order() -> None:
    assert plan(STACK, {}) == Plan(start=("node", "init", "pb", "caddy"))


def test_a_changed_service_restarts_alone() -> None:
    desired = Desired((NODE, INIT, PB, replace(CADDY, argv=("run", "--new"))))
    assert plan(desired, RUNNING, ORDER) == Plan(restart=("caddy",), keep=("node", "init", "pb"))


def test_a_dependency_restart_leaves_its_dependents_running() -> None:
    desired = Desired((replace(NODE, argv=("run", "-v")), INIT, PB, CADDY))
    assert plan(desired, RUNNING, ORDER) == Plan(restart=("node",), keep=("init", "pb", "caddy"))


def test_a_job_that_runs_again_restarts_what_waits_for_its_completion() -> None:
    desired = Desired((NODE, replace(INIT, argv=("init", "--other")), PB, CADDY))
    assert plan(desired, RUNNING, ORDER) == Plan(restart=("init", "pb"), keep=("node", "caddy"))


def test_only_a_live_config_changed_reconfigures_without_restart() -> None:
    desired = Desired((NODE, INIT, PB, replace(CADDY, config_file=GeneratedFile(
        Path("/s/caddy.json"), '{"routes": 2}'))))
    assert plan(desired, RUNNING, ORDER) == Plan(reconfigure=("caddy",), keep=("node", "init", "pb"))


def test_new_services_start_and_removed_ones_stop_dependents_first() -> None:
    mirror = spec("mirror", ("pb", Condition.HEALTHY))
    desired = Desired((NODE, INIT, mirror))
    running = {**RUNNING}
    p = plan(desired, running, ORDER)
    assert p == Plan(stop=("caddy", "pb"), start=("mirror",), keep=("node", "init"))
    assert p.describe() == "stop caddy, pb; start mirror"
