"""One supervised nats-server child process.

Lifecycle (ProcessState):

    STOPPED --start()--> STARTING --/healthz ok--> READY
    READY --child dies--> BACKOFF --delay--> STARTING --> READY        (restart, on_failure)
    BACKOFF/STARTING --too many restarts in the window--> FAILED       (gave up, loudly)
    any --stop()--> STOPPING --> STOPPED   (SIGUSR2 lame duck -> SIGINT -> SIGKILL)

The child runs in its own session (a Ctrl-C on our terminal does not reach it; we stop it
in order) and with PR_SET_PDEATHSIG=SIGKILL, so it dies with us even if we are SIGKILLed.
Its output is drained line by line into our log, and the last lines are kept to explain
failures. Reloads are rewrite + SIGHUP, confirmed by a changed `config_digest` in /varz.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import fcntl
import logging
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from natsembed._config import write_config
from natsembed._credentials import write_private
from natsembed._monitor import MonitorClient
from natsembed.errors import NotReady, ReloadRejected, StartFailed

log = logging.getLogger("natsembed")

# nats-server's line for a port another process holds: `... 127.0.0.1:6222: bind: address
# already in use` (read once, here, into StartFailed.port_in_use)
_PORT_IN_USE_RE = re.compile(r":(\d+): bind: address already in use")
_LINE_RE = re.compile(r"^\[\d+\]\s+\S+\s+\S+\s+\[(\w{3})\]\s+(.*)$")
_LEVELS = {
    "TRC": logging.DEBUG,
    "DBG": logging.DEBUG,
    "INF": logging.DEBUG,  # nats-server is chatty; our own log states what matters
    "WRN": logging.WARNING,
    "ERR": logging.ERROR,
    "FTL": logging.ERROR,
}


# Lines nats-server prints at WRN/ERR while a cluster forms, while we poll it, or while a
# peer is away: not news in our log (the cluster manager reports peers), kept at debug.
_BENIGN_RE = re.compile(
    r"Healthcheck failed|Waiting for routing|not established contact with a meta leader|"
    r"Metalayer blocking snapshot|JetStream cluster no metadata leader|Plaintext passwords|"
    r"Error trying to connect to route|connect: connection refused|detected stream remapping|"
    r"is not current with the meta leader|"
    # a restarted lone pair asked to elect now: a "rescue" at the unchanged quorum (see
    # natsembed._election), and its end; a rescue that lowers the quorum stays a warning
    r"Unsafe quorum rescue applied, quorum lowered (?P<q>\d+) -> (?P=q) for|"
    r"Unsafe quorum rescue stopped, quorum updated to"
)

# What nats-server says when it was removed from the meta group (peer-remove).
_REMOVED_RE = re.compile(r"our server was removed from the cluster")


class ProcessState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    FAILED = "failed"


@dataclass(frozen=True)
class RestartPolicy:
    """on_failure restarts with exponential backoff, at most `max_restarts` per `window`."""

    max_restarts: int = 5
    window: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 15.0

    def delay(self, attempt: int) -> float:
        return min(self.backoff_initial * (2.0 ** max(0, attempt - 1)), self.backoff_max)


@dataclass(frozen=True)
class Timeouts:
    start: float = 60.0  # spawn -> /healthz answers
    lame_duck: float = 5.0  # SIGUSR2 -> exit, before we send SIGINT
    interrupt: float = 10.0  # SIGINT -> exit, before we send SIGKILL
    kill: float = 5.0
    reload: float = 5.0  # SIGHUP -> config_digest changes
    # a fresh node + witness elect their first meta leader within raft's campaign delay
    # (0.1-0.8 s); one whose first vote was lost would wait raft's election timeout (4-9 s)
    first_election: float = 1.0


@dataclass(frozen=True)
class ProcessSnapshot:
    name: str
    state: ProcessState
    pid: int | None
    restarts: int
    started_at: float | None  # epoch seconds of the current child's start
    last_exit_code: int | None
    last_error: str | None


# --- child set-up (runs between fork and exec: no imports, no allocation-heavy work) ----
if sys.platform.startswith("linux"):
    _libc = ctypes.CDLL(None, use_errno=True)
    _prctl = _libc.prctl
    _PR_SET_PDEATHSIG = 1

    def _child_setup(parent: int) -> Callable[[], None]:
        def setup() -> None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)

        return setup
else:  # pragma: no cover - other platforms rely on the pid-file clean-up

    def _child_setup(parent: int) -> Callable[[], None] | None:  # type: ignore[misc]
        return None


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes a child die (SIGKILL) with this process, however it ends.

    Every child natsembed spawns gets it; other supervisors (the stack) reuse it, with
    `start_new_session=True`, so that a SIGKILLed supervisor leaves no orphan behind.
    """
    return _child_setup(os.getpid())


def _output_pipe() -> tuple[int, int]:
    """A pipe for nats-server's output, with the largest buffer allowed (1 MiB by default).

    nats-server blocks when its output pipe is full. We drain it continuously, but a
    supervisor that hangs (or is SIGSTOPped) must not stall the server within seconds.
    """
    read_fd, write_fd = os.pipe()
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/sys/fs/pipe-max-size") as f:
                limit = int(f.read())
            fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, limit)
        except (OSError, ValueError) as exc:  # a smaller pipe still works
            log.debug("Could not enlarge nats-server's output pipe: %s", exc)
    return read_fd, write_fd


class ServerProcess:
    """Supervises one nats-server running `config_path`."""

    def __init__(
        self,
        *,
        name: str,
        binary: Path,
        config_path: Path,
        monitor: MonitorClient,
        pid_file: Path,
        policy: RestartPolicy = RestartPolicy(),
        timeouts: Timeouts = Timeouts(),
        on_change: Callable[[ProcessSnapshot], None] | None = None,
        removal_expected: bool = False,
    ) -> None:
        # removal_expected: a witness, which its node removes from the meta group when a
        # peer joins; nats-server's ERROR about that removal is then logged at INFO.
        self.name = name
        self._removal_expected = removal_expected
        self.binary = binary
        self.config_path = config_path
        self.monitor = monitor
        self.pid_file = pid_file
        self.policy = policy
        self.timeouts = timeouts
        self._on_change = on_change
        self._proc: asyncio.subprocess.Process | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._supervise_task: asyncio.Task[None] | None = None
        self._state = ProcessState.STOPPED
        self._stopping = False
        self._restarts = 0
        self._restart_times: deque[float] = deque()
        self._started_at: float | None = None
        self._last_exit: int | None = None
        self._last_error: str | None = None
        self._output: deque[tuple[float, str, str]] = deque(maxlen=300)
        self._reload_lock = asyncio.Lock()
        self.spawned = asyncio.Event()  # set once a child has been spawned
        self._child_log = logging.getLogger(f"nats-server.{name}")

    # --- state ---------------------------------------------------------------------------
    @property
    def state(self) -> ProcessState:
        return self._state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None

    def snapshot(self) -> ProcessSnapshot:
        return ProcessSnapshot(
            name=self.name,
            state=self._state,
            pid=self.pid,
            restarts=self._restarts,
            started_at=self._started_at,
            last_exit_code=self._last_exit,
            last_error=self._last_error,
        )

    def _set_state(self, state: ProcessState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change:
                self._on_change(self.snapshot())

    def recent_output(self, since: float = 0.0, levels: tuple[str, ...] = ()) -> list[str]:
        return [m for t, lvl, m in self._output if t >= since and (not levels or lvl in levels)]

    def _last_problem(self, since: float = 0.0) -> str | None:
        lines = [line for line in self.recent_output(since, ("FTL", "ERR")) if not _BENIGN_RE.search(line)]
        return lines[-1] if lines else None

    # --- start ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn nats-server and wait until its monitoring port answers /healthz.

        Raises StartFailed (with nats-server's own last error line) when the child exits
        or is not ready within the start timeout; nothing is left running then.
        """
        if self._state not in (ProcessState.STOPPED, ProcessState.FAILED):
            raise NotReady(f"nats-server {self.name} is already {self._state.value}.")
        self._stopping = False
        self._restart_times.clear()
        await asyncio.to_thread(self._stop_stale)
        await self._spawn()
        try:
            await self._wait_ready()
        except StartFailed as exc:
            self._last_error = str(exc)
            await self._kill_now()
            self._set_state(ProcessState.FAILED)
            raise
        self._supervise_task = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    def _stop_stale(self) -> None:
        """Stop a nats-server left running by a previous supervisor on our config."""
        import psutil

        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            proc = psutil.Process(pid)
            cmdline = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return
        if str(self.config_path) not in cmdline:
            return
        log.warning("Stopping stale nats-server %s (pid %d) left by a previous run", self.name, pid)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(self.timeouts.interrupt)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(self.timeouts.kill)

    async def _spawn(self) -> None:
        self._set_state(ProcessState.STARTING)
        read_fd, write_fd = _output_pipe()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                str(self.binary), "-c", str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                start_new_session=True,
                preexec_fn=_child_setup(os.getpid()),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the child has its copy; EOF comes when it exits
        self._started_at = time.time()
        log.debug("Spawned nats-server %s (pid %d)", self.name, self._proc.pid)
        self.spawned.set()
        write_private(self.pid_file, f"{self._proc.pid}\n")
        reader = asyncio.StreamReader()
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
        )
        self._drain_task = asyncio.create_task(self._drain(reader, transport), name=f"drain-{self.name}")

    async def _drain(self, reader: asyncio.StreamReader, transport: asyncio.BaseTransport) -> None:
        try:
            await self._drain_lines(reader)
        finally:
            transport.close()

    async def _drain_lines(self, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):  # an absurdly long line
                continue
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip()
            m = _LINE_RE.match(line)
            level, msg = (m.group(1), m.group(2)) if m else ("INF", line)
            self._output.append((time.time(), level, msg))
            lvl = _LEVELS.get(level, logging.INFO)
            if lvl >= logging.WARNING and level != "FTL" and _BENIGN_RE.search(msg):
                lvl = logging.DEBUG
            elif lvl >= logging.WARNING and self._removal_expected and _REMOVED_RE.search(msg):
                lvl = logging.INFO
            self._child_log.log(lvl, "[%s] %s", self.name, msg)

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        proc = self._proc
        deadline = time.monotonic() + self.timeouts.start
        pause = 0.005
        while True:
            if proc.returncode is not None:
                await self._finish_drain()
                problem = self._last_problem() or "no error message"
                taken = _PORT_IN_USE_RE.search(problem)
                raise StartFailed(
                    f"nats-server {self.name} exited during start (exit code {proc.returncode}): {problem}",
                    process=self.name,
                    port_in_use=int(taken.group(1)) if taken else None,
                )
            if await self.monitor.healthz(js_enabled_only=True):
                self._set_state(ProcessState.READY)
                return
            if time.monotonic() > deadline:
                raise StartFailed(
                    f"nats-server {self.name} did not answer on its monitoring port "
                    f"within {self.timeouts.start:g}s",
                    process=self.name,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02)

    async def _finish_drain(self) -> None:
        if self._drain_task:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._drain_task), 2.0)

    # --- supervision -----------------------------------------------------------------------
    async def _supervise(self) -> None:
        """Restart the child when it dies, per the policy. Survives its own errors."""
        while not self._stopping:
            try:
                proc = self._proc
                assert proc is not None
                code = await proc.wait()
                await self._finish_drain()
                if self._stopping:
                    return
                self._last_exit = code
                problem = self._last_problem(self._started_at or 0.0)
                self._last_error = f"exited with code {code}" + (f": {problem}" if problem else "")
                now = time.monotonic()
                while self._restart_times and now - self._restart_times[0] > self.policy.window:
                    self._restart_times.popleft()
                if len(self._restart_times) >= self.policy.max_restarts:
                    log.error(
                        "nats-server %s %s; it failed %d times within %gs, giving up on it",
                        self.name, self._last_error, len(self._restart_times) + 1, self.policy.window,
                    )
                    self._set_state(ProcessState.FAILED)
                    return
                self._restart_times.append(now)
                delay = self.policy.delay(len(self._restart_times))
                log.warning(
                    "nats-server %s %s; restarting in %.1fs (restart %d of %d allowed in %gs)",
                    self.name, self._last_error, delay, len(self._restart_times),
                    self.policy.max_restarts, self.policy.window,
                )
                self._set_state(ProcessState.BACKOFF)
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                self._restarts += 1
                await self._spawn()
                try:
                    await self._wait_ready()
                    log.info("nats-server %s is running again (pid %d)", self.name, self.pid)
                except StartFailed as exc:
                    self._last_error = str(exc)
                    await self._kill_now()  # counted as a failure on the next turn
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in this loop must not end supervision
                log.exception("Supervision of nats-server %s hit an unexpected error", self.name)
                await asyncio.sleep(1.0)

    # --- reload ----------------------------------------------------------------------------
    async def reload(self, text: str) -> bool:
        """Make the running server use config `text` (check, write, SIGHUP, confirm).

        Returns False when `text` equals the running config (nothing to do), True when
        the server confirmed the new config. Raises NotReady unless the server is ready,
        ConfigInvalid when `nats-server -t` refuses the text, and ReloadRejected when the
        server kept its old config (the old file is restored, the old config keeps running).
        """
        async with self._reload_lock:
            if self._state is not ProcessState.READY or self._proc is None:
                raise NotReady(f"nats-server {self.name} is {self._state.value}; cannot reload now.")
            old_text = self.config_path.read_text() if self.config_path.exists() else ""
            if old_text == text:
                return False
            before = (await self.monitor.varz()).config_digest
            await write_config(self.binary, self.config_path, text)
            sent_at = time.time()
            self._proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + self.timeouts.reload
            while time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                try:
                    if (await self.monitor.varz()).config_digest != before:
                        return True
                except Exception:  # noqa: BLE001 - the monitor may blink; keep polling
                    continue
                if self._last_problem(sent_at):
                    break
            write_private(self.config_path, old_text)
            problem = self._last_problem(sent_at) or "no confirmation within the reload timeout"
            raise ReloadRejected(
                f"nats-server {self.name} rejected the new configuration ({problem}); "
                "the previous configuration keeps running."
            )

    # --- stop ------------------------------------------------------------------------------
    async def stop(self, *, at_once: bool = False) -> None:
        """Stop in order: lame duck (SIGUSR2), then SIGINT, then SIGKILL, each with a timeout;
        `at_once`: SIGKILL straight away (a server with nothing to hand over or keep)."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            was_ready = self._state is ProcessState.READY
            self._set_state(ProcessState.STOPPING)
            steps = [(signal.SIGINT, self.timeouts.interrupt), (signal.SIGKILL, self.timeouts.kill)]
            if at_once:
                steps = steps[1:]
            elif was_ready:
                steps.insert(0, (signal.SIGUSR2, self.timeouts.lame_duck))
            for sig, timeout in steps:
                if proc.returncode is not None:
                    break
                if sig is signal.SIGKILL and not at_once:
                    log.warning("nats-server %s did not stop in time; killing it", self.name)
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(proc.wait(), timeout)
        if self._supervise_task and self._supervise_task is not asyncio.current_task():
            self._supervise_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervise_task
        await self._finish_drain()
        self.pid_file.unlink(missing_ok=True)
        self._set_state(ProcessState.STOPPED)

    async def _kill_now(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        await self._finish_drain()
