"""What the supervisor publishes about itself: .nimsforest-stack/state.json (StackStatus).

The supervisor rewrites the file (atomically) on every change of a service; `stack status`
reads it. The pid file and the lock say whether a supervisor is alive: the lock is held
(fcntl) for as long as the supervisor runs, so a stale file never looks like a live stack.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

STATE_FILE = "state.json"
PID_FILE = "stack.pid"
LOCK_FILE = "stack.lock"


class ServiceState(enum.Enum):
    PENDING = "pending"  # waiting for its dependencies
    STARTING = "starting"  # spawned, readiness probe not passed yet
    RUNNING = "running"  # running (ready, or without a readiness probe)
    BACKOFF = "backoff"  # exited; restarting after the backoff
    COMPLETED = "completed"  # exited with code 0 and is not restarted (a set-up job)
    FAILED = "failed"  # exited and is not restarted (policy, or too many restarts)
    STOPPING = "stopping"
    STOPPED = "stopped"


class Health(enum.Enum):
    NONE = "-"  # no readiness probe
    UNKNOWN = "unknown"
    READY = "ready"
    NOT_READY = "not ready"


class StackPhase(enum.Enum):
    STARTING = "starting"
    UP = "up"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ServiceStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    state: ServiceState
    health: Health
    pid: int | None
    restarts: int
    ports: dict[str, int]
    started_at: float | None  # epoch seconds: the current process was spawned
    ready_at: float | None  # epoch seconds: its readiness probe first passed
    exit_code: int | None

    @property
    def settled(self) -> bool:
        """Up and healthy, or done: what `stack up --detach` waits for."""
        if self.state is ServiceState.COMPLETED:
            return True
        return self.state is ServiceState.RUNNING and self.health in (Health.READY, Health.NONE)


class StackStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    supervisor_pid: int
    phase: StackPhase
    updated_at: float
    services: tuple[ServiceStatus, ...]

    def service(self, name: str) -> ServiceStatus | None:
        return next((s for s in self.services if s.name == name), None)

    @property
    def settled(self) -> bool:
        return self.phase is StackPhase.UP and all(s.settled for s in self.services)


def write_status(stack_dir: Path, status: StackStatus) -> None:
    tmp = stack_dir / f".{STATE_FILE}.tmp"
    tmp.write_text(status.model_dump_json(indent=2))
    os.replace(tmp, stack_dir / STATE_FILE)


def read_status(stack_dir: Path) -> StackStatus | None:
    try:
        return StackStatus.model_validate_json((stack_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


class Lock:
    """The supervisor's lock on a stack folder, held while it runs."""

    def __init__(self, stack_dir: Path) -> None:
        self.stack_dir = stack_dir
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.stack_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.stack_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        (self.stack_dir / PID_FILE).write_text(f"{os.getpid()}\n")
        return True

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                (self.stack_dir / PID_FILE).unlink()
            os.close(self._fd)
            self._fd = None


def running_supervisor(stack_dir: Path) -> int | None:
    """The pid of the live supervisor of `stack_dir`, or None (its lock is free)."""
    path = stack_dir / LOCK_FILE
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                return int((stack_dir / PID_FILE).read_text().strip())
            except (OSError, ValueError):
                return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
