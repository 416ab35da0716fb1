"""One supervised service of the stack: wait for dependencies, spawn, probe, restart, stop.

Lifecycle (ServiceState):

    PENDING --dependencies met--> STARTING --readiness passes--> RUNNING
    RUNNING/STARTING --exits--> BACKOFF --backoff--> PENDING ...   (availability allows it)
                     --exits 0, not `always`--> COMPLETED
                     --exits, no restart left--> FAILED
    any --stop()--> STOPPING --> STOPPED   (shutdown signal to the group, then SIGKILL)

Children are spawned the way natsembed spawns nats-server: in their own session (so the
shutdown signal goes to the process group) and with natsembed's `die_with_parent`, so a
SIGKILLed supervisor leaves no orphan. Output goes to .nimsforest-stack/logs/<name>.log.

Once ready, the readiness probe goes on at its period but at most once a second (a fast
period is for start-up); the liveness probe, when there is one, kills the process group
after `failure_threshold` failures in a row, and the availability policy restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from natsembed import die_with_parent
from nimsforest.stack._manifest import Condition, Probe, Restart
from nimsforest.stack._resolve import ServiceSpec, StackPaths
from nimsforest.stack._state import Health, ServiceState, ServiceStatus

if TYPE_CHECKING:
    from nimsforest.stack._probe import Prober

log = logging.getLogger("nimsforest.stack")

READY_RECHECK_MIN_S = 1.0

# (dependency name, condition) -> returns once the condition holds
WaitFor = Callable[[str, Condition], Awaitable[None]]


class ServiceRunner:
    """Runs one ServiceSpec until `stop()`; `on_change` is called on every state change."""

    def __init__(self, spec: ServiceSpec, paths: StackPaths, prober: Callable[[], Prober],
                 wait_for: WaitFor, on_change: Callable[[], None]) -> None:
        self.spec = spec
        self.paths = paths
        self._prober = prober
        self._wait_for = wait_for
        self._on_change = on_change
        self.state = ServiceState.PENDING
        self.health = Health.NONE if spec.readiness is None else Health.UNKNOWN
        self.restarts = 0
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.exit_code: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    # --- observing -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def status(self) -> ServiceStatus:
        return ServiceStatus(
            name=self.name, state=self.state, health=self.health, pid=self.pid,
            restarts=self.restarts, ports={n: p.port for n, p in self.spec.ports},
            started_at=self.started_at, ready_at=self.ready_at, exit_code=self.exit_code,
        )

    def meets(self, condition: Condition) -> bool:
        if condition is Condition.COMPLETED_SUCCESSFULLY:
            return self.state is ServiceState.COMPLETED
        if condition is Condition.HEALTHY:
            return self.state is ServiceState.RUNNING and self.health in (Health.READY, Health.NONE)
        return self.state in (ServiceState.STARTING, ServiceState.RUNNING, ServiceState.COMPLETED)

    def _set(self, state: ServiceState | None = None, health: Health | None = None) -> None:
        changed = False
        if state is not None and state is not self.state:
            self.state, changed = state, True
        if health is not None and health is not self.health:
            self.health, changed = health, True
        if changed:
            self._on_change()

    # --- running ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the service's task (it waits for the dependencies first)."""
        self._task = asyncio.create_task(self._run(), name=f"service-{self.name}")

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if not await self._run_once():
                    return
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not end supervision
                log.exception("Supervision of service %s hit an unexpected error", self.name)
                await self._kill_group(signal.SIGKILL)
                await asyncio.sleep(1.0)

    async def _run_once(self) -> bool:
        """One life of the process; True when it should be started again."""
        self._set(ServiceState.PENDING)
        for dep, condition in self.spec.depends_on:
            await self._wait_for(dep, condition)
        if self._stopping:
            return False
        await self._spawn()
        proc = self._proc
        assert proc is not None
        probes = asyncio.create_task(self._probe(), name=f"probe-{self.name}")
        try:
            code = await proc.wait()
        finally:
            probes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probes
        self.exit_code = code
        if self._stopping:
            return False
        policy = self.spec.availability
        if code == 0 and policy.restart is not Restart.ALWAYS:
            log.info("Service %s completed", self.name)
            self._set(ServiceState.COMPLETED)
            return False
        if policy.restart is Restart.NO or (
            policy.max_restarts and self.restarts >= policy.max_restarts
        ):
            why = "its policy is not to restart it" if policy.restart is Restart.NO else (
                f"it was restarted {self.restarts} times already")
            log.error("Service %s exited with code %s and stays down: %s", self.name, code, why)
            self._set(ServiceState.FAILED)
            return False
        log.warning("Service %s exited with code %s; restarting in %gs", self.name, code,
                    policy.backoff_seconds)
        self._set(ServiceState.BACKOFF, Health.NONE if self.spec.readiness is None else Health.UNKNOWN)
        await asyncio.sleep(policy.backoff_seconds)
        self.restarts += 1
        return True

    def _write_config(self) -> None:
        file = self.spec.config_file
        if file is not None:
            file.path.parent.mkdir(parents=True, exist_ok=True)
            if not file.path.exists() or file.path.read_text() != file.text:
                file.path.write_text(file.text)

    async def _spawn(self) -> None:
        self._write_config()
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.paths.data.mkdir(parents=True, exist_ok=True)
        log_path = self.paths.logs / f"{self.name}.log"
        out = await asyncio.to_thread(open, log_path, "ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                env={**os.environ, **dict(self.spec.env)},
                cwd=self.paths.root,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        finally:
            out.close()  # the child has its own copy
        self.started_at = time.time()
        self.ready_at = None
        self.exit_code = None
        log.info("Service %s started (pid %d)", self.name, self._proc.pid)
        self._set(ServiceState.STARTING if self.spec.readiness else ServiceState.RUNNING)

    async def _probe(self) -> None:
        readiness, liveness = self.spec.readiness, self.spec.liveness
        async with asyncio.TaskGroup() as tg:
            if readiness is not None:
                tg.create_task(self._readiness(readiness))
            if liveness is not None:
                tg.create_task(self._liveness(liveness))

    async def _readiness(self, probe: Probe) -> None:
        await asyncio.sleep(probe.initial_delay_seconds)
        failures = 0
        while True:
            if await self._prober().check(probe):
                failures = 0
                if self.health is not Health.READY:
                    if self.ready_at is None:
                        self.ready_at = time.time()
                        log.info("Service %s is ready", self.name)
                    else:
                        log.info("Service %s is ready again", self.name)
                    self._set(ServiceState.RUNNING, Health.READY)
            else:
                failures += 1
                if self.health is Health.READY and failures >= probe.failure_threshold:
                    log.warning("Service %s is not ready (%d failed checks)", self.name, failures)
                    self._set(health=Health.NOT_READY)
            period = probe.period_seconds
            await asyncio.sleep(max(period, READY_RECHECK_MIN_S) if self.ready_at else period)

    async def _liveness(self, probe: Probe) -> None:
        await asyncio.sleep(probe.initial_delay_seconds)
        failures = 0
        while True:
            if await self._prober().check(probe):
                failures = 0
            else:
                failures += 1
                if failures >= probe.failure_threshold:
                    log.warning("Service %s failed its liveness probe %d times; killing it",
                                self.name, failures)
                    await self._kill_group(signal.SIGKILL)
                    return
            await asyncio.sleep(probe.period_seconds)

    # --- changing and stopping ---------------------------------------------------------------
    async def reconfigure(self, spec: ServiceSpec) -> None:
        """Apply a new live config (same process): write it and POST it to `reload_url`."""
        self.spec = spec
        self._write_config()
        if spec.reload_url is None or spec.config_file is None or self.pid is None:
            return
        reply = await self._prober().post_config(spec.reload_url, spec.config_file.text)
        if reply.status is None:
            log.error("Service %s did not take its new configuration (%s); it applies at its "
                      "next start", self.name, reply.unreachable)
        elif not reply.applied:
            log.error("Service %s refused its new configuration (HTTP %d): %s", self.name,
                      reply.status, reply.text)
        else:
            log.info("Service %s applied its new configuration without a restart", self.name)

    async def _kill_group(self, sig: signal.Signals | int) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)

    async def stop(self) -> None:
        """Shutdown signal to the process group, SIGKILL after the timeout; then STOPPED."""
        self._stopping = True
        proc = self._proc
        was_running = proc is not None and proc.returncode is None
        if proc is not None and proc.returncode is None:
            self._set(ServiceState.STOPPING)
            await self._kill_group(self.spec.shutdown.signal)
            try:
                await asyncio.wait_for(proc.wait(), self.spec.shutdown.timeout_seconds)
            except TimeoutError:
                log.warning("Service %s did not stop within %gs; killing it", self.name,
                            self.spec.shutdown.timeout_seconds)
                await self._kill_group(signal.SIGKILL)
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        proc = self._proc  # a spawn may have finished while we were cancelling
        if proc is not None and proc.returncode is None:
            await self._kill_group(signal.SIGKILL)
            await proc.wait()
        if was_running:
            log.info("Service %s stopped", self.name)
        self._set(ServiceState.STOPPED, Health.NONE if self.spec.readiness is None else Health.UNKNOWN)
