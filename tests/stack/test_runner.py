"""The supervisor's policies on small real processes (Python one-liners), in this event loop."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from nimsforest.stack import ServiceState, Stack, StackPaths, parse_manifest, resolve
from tests.support import eventually, free_port


def manifest(args: list[str], **compose: Any) -> dict[str, Any]:
    return {"process": {"command": sys.executable, "args": args, "compose": compose}}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    s = Stack(StackPaths.for_root(tmp_path, tmp_path / "services"))
    try:
        yield s
    finally:
        await s.stop_all()


async def apply(stack: Stack, services: dict[str, dict[str, Any]]) -> None:
    manifests = {n: parse_manifest(json.dumps(m), n) for n, m in services.items()}
    await stack.apply(resolve(manifests, {}, stack.paths))


def state(stack: Stack, name: str) -> Any:
    runner = stack.runner(name)
    assert runner is not None
    return runner.status()


async def test_a_failing_liveness_probe_kills_and_restarts_the_service(stack: Stack) -> None:
    await apply(stack, {"web": manifest(
        ["-c", "import time; time.sleep(60)"],
        liveness_probe={"tcp": {"port": free_port()}, "period_seconds": 0.1, "failure_threshold": 2},
        availability={"restart": "on_failure", "backoff_seconds": 0.1})})
    first = await eventually(lambda: state(stack, "web").pid, timeout=20, what="spawned")
    await eventually(lambda: state(stack, "web").restarts >= 1 and state(stack, "web").pid not in (
        None, first), timeout=20, what="a restart after the liveness probe failed")
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE


async def test_restarts_stop_at_the_maximum_and_the_service_is_failed(stack: Stack) -> None:
    await apply(stack, {"crash": manifest(
        ["-c", "raise SystemExit(3)"],
        availability={"restart": "on_failure", "backoff_seconds": 0.05, "max_restarts": 2})})
    await eventually(lambda: state(stack, "crash").state is ServiceState.FAILED, timeout=20,
                     what="the service failed")
    assert state(stack, "crash").restarts == 2 and state(stack, "crash").exit_code == 3


async def test_a_job_completes_and_its_dependent_starts_after_it(stack: Stack) -> None:
    await apply(stack, {
        "job": manifest(["-c", "pass"]),
        "app": manifest(["-c", "import time; time.sleep(60)"],
                        depends_on={"job": {"condition": "process_completed_successfully"}}),
    })
    await eventually(lambda: state(stack, "app").state is ServiceState.RUNNING, timeout=20,
                     what="the dependent running")
    job, app = state(stack, "job"), state(stack, "app")
    assert job.state is ServiceState.COMPLETED and job.exit_code == 0
    assert job.started_at <= app.started_at


async def test_stop_sigkills_the_process_group_after_the_shutdown_timeout(stack: Stack) -> None:
    stubborn = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)")
    await apply(stack, {"stubborn": manifest(["-c", stubborn],
                                             shutdown={"signal": "SIGTERM", "timeout_seconds": 0.5})})
    pid = await eventually(lambda: state(stack, "stubborn").pid, timeout=20, what="spawned")

    def tree() -> list[psutil.Process]:
        parent = psutil.Process(pid)
        return [parent, *parent.children()]

    procs = await eventually(lambda: len(tree()) == 2 and tree(), timeout=20, what="its child")
    await stack.stop_all()

    def gone() -> bool:  # SIGKILL went to the whole group; the child's exit is its own
        return all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs)

    await eventually(gone, timeout=10, what="the service and its child gone")
