"""Helpers shared by tests (not fixtures)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from natsembed import EmbeddedNats
from natsembed import free_port as _free_port

T = TypeVar("T")

# The `embedded` fixture (tests/conftest.py): name, **EmbeddedConfig fields -> an EmbeddedNats
# (not started) on free ports, stopped after the test.
EmbeddedFactory = Callable[..., "EmbeddedNats"]


def _worker_share() -> tuple[int, int]:
    """This xdist worker's slice of the port pool: workers never pick the same port."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(worker[2:]) < int(count):
        return int(worker[2:]), int(count)
    return 0, 1


def free_port(host: str = "127.0.0.1") -> int:
    """A free port from this test worker's share of the pool (see natsembed.free_port; the
    conftest puts the share in NATSEMBED_PORT_SHARE, so the nodes and servers a test starts
    pick their own ports from it too)."""
    return _free_port(host, share=_worker_share())


__all__ = ["EmbeddedFactory", "NodeProcess", "RegistryProcess", "eventually", "free_port"]


async def eventually(
    check: Callable[[], Awaitable[T]] | Callable[[], T],
    timeout: float = 20.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll `check` until it returns a truthy value; fail the test after `timeout`.

    This waits for behaviour; it never asserts how long something took.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
        except Exception as exc:  # noqa: BLE001 - reported below if it persists
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {last_exc!r}" if last_exc else ""))
        await asyncio.sleep(interval)




async def publish_stored(js: Any, subject: str, payload: bytes, *, msg_id: str, timeout: float = 30.0) -> Any:
    """Publish to a stream until it acknowledges, once: a stream just created in a cluster
    may not have its subject's interest on this server yet (no responders), and the message
    id makes a retry after a lost ack a duplicate the stream drops."""
    return await eventually(lambda: js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id}),
                            timeout=timeout, what=f"{subject} stored")

def nats_children(pid: int) -> list[psutil.Process]:
    """The nats-server processes under `pid` (a node's own server and its witness)."""
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [k for k in kids if "nats-server" in " ".join(k.cmdline())]


def freeze(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP `pid` and return once every one of its threads has stopped: kill() returns
    before the stop takes effect (each thread stops when it next handles the signal), and on
    a busy machine a thread still running answered a request sent right after (seen: a
    write acknowledged 7 ms after SIGSTOP)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while not _all_threads_stopped(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop within {timeout}s of SIGSTOP")
        time.sleep(0.001)


def _all_threads_stopped(pid: int) -> bool:
    """Every thread of `pid` is in the stopped state (T, or t when traced)."""
    tasks = Path(f"/proc/{pid}/task")
    return all((t / "stat").read_text().rsplit(") ", 1)[1][:1] in "Tt" for t in tasks.iterdir())


async def routed_servers(
    embedded: EmbeddedFactory, prefix: str, count: int = 3, tags: tuple[tuple[str, ...], ...] = ()
) -> list[EmbeddedNats]:
    """`count` embedded servers named <prefix>1..., routed together (the first started with
    its witness), once their meta group has all of them and a leader; `tags[i]` are the
    extra server tags of the i-th."""
    nodes: list[EmbeddedNats] = []
    for i in range(count):
        extra = {"extra_tags": tags[i]} if i < len(tags) else {}
        n = embedded(f"{prefix}{i + 1}", witness=not nodes,
                     routes=tuple(m.cluster_address for m in nodes), **extra)
        await n.start()
        nodes.append(n)
    for n in nodes:
        await n.set_routes([m.cluster_address for m in nodes if m is not n])

    async def whole() -> bool:
        meta = (await nodes[0].monitor.jsz()).meta_cluster
        return meta is not None and meta.cluster_size >= count and bool(meta.leader)

    await eventually(whole, timeout=60, what=f"a meta group of {count}")
    return nodes


class NodeProcess:
    """A `nimsforest` daemon run as a separate process, as users run it."""

    def __init__(self, command: str, data_dir: Path, *, host: str = "127.0.0.1",
                 extra: list[str] | None = None, env: dict[str, str] | None = None,
                 name: str = "n1", wrapper: list[str] | None = None,
                 ports: tuple[int, int, int, int] | None = None) -> None:
        self.name = name
        self.host = host
        self.data_dir = data_dir
        # `wrapper` runs the node elsewhere (e.g. `ip netns exec NS`), where the default
        # ports can be given explicitly because that network stack is the node's own.
        self.client_port, self.cluster_port, self.monitor_port, self.api_port = ports or (
            free_port(host), free_port(host), free_port(host), free_port(host)
        )
        self.args = [
            *(wrapper or []), sys.executable, "-m", "nimsforest", command,
            "--node-name", name,
            "--data-dir", str(data_dir),
            "--client-port", str(self.client_port),
            "--cluster-port", str(self.cluster_port),
            "--monitor-port", str(self.monitor_port),
            "--api", f"{host}:{self.api_port}",
            *(extra or []),
        ]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{name}.log"
        self.cluster_secret: str | None = None
        if "--cluster-secret" in self.args:
            self.cluster_secret = self.args[self.args.index("--cluster-secret") + 1]

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    def start(self) -> NodeProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"node {self.name} is already running")
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def health(self, path: str = "/health") -> tuple[int, dict]:
        r = httpx.get(self.api_url + path, timeout=3)
        return r.status_code, r.json()

    def cluster(self) -> dict:
        return self.health("/health/cluster")[1]

    def kill(self) -> None:
        """SIGKILL the node (its nats-server children die with it: PDEATHSIG)."""
        assert self.proc is not None
        self.proc.kill()
        self.wait(10)

    async def wait_healthy(self, timeout: float = 60) -> dict:
        def check() -> dict | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"node {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            code, body = self.health()
            return body if code == 200 else None

        return await eventually(check, timeout=timeout, what=f"node {self.name} healthy")

    def credentials(self, cluster_secret: str | None = None) -> dict:
        from natsembed import load_or_create

        creds = load_or_create(self.data_dir).with_cluster_secret(cluster_secret or self.cluster_secret)
        return {"app_user": creds.app_user, "app_password": creds.app_password,
                "sys_user": creds.sys_user, "sys_password": creds.sys_password}

    def client_url(self) -> str:
        c = self.credentials()
        return f"nats://{c['app_user']}:{c['app_password']}@{self.host}:{self.client_port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def signal_stop(self) -> None:
        """SIGTERM without waiting (several nodes stopped at once; then `stop` waits)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait(10)


class RegistryProcess:
    """`nimsforest registry serve` as a separate process."""

    def __init__(self, data: Path, host: str = "127.0.0.1", env: dict[str, str] | None = None) -> None:
        self.host = host
        self.port = free_port(host)
        self.data = data
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data.parent / "registry.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> RegistryProcess:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nimsforest", "registry", "serve", "--host", self.host,
             "--port", str(self.port), "--data", str(self.data)],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
        )
        return self

    async def wait_ready(self, timeout: float = 30) -> None:
        def ok() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()
            try:
                return httpx.get(self.url + "/v1/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ok, timeout=timeout, what="registry ready")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()


class OtlpReceiver(ThreadingHTTPServer):
    """A real local OTLP/HTTP receiver: keeps every export request it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OtlpHandler)
        self.requests: list[tuple[str, ExportTraceServiceRequest]] = []

    def spans(self) -> list[Span]:
        return [s for path, req in list(self.requests) for rs in req.resource_spans
                for ss in rs.scope_spans for s in ss.spans if path == "/v1/traces"]


class _OtlpHandler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.requests.append((self.path, ExportTraceServiceRequest.FromString(body)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass
