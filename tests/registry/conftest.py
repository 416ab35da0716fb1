"""Registry test fixtures: the real registry server as a subprocess on a free port."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import free_port, freeze


class RegistryProcess:
    """`python -m nimsforest registry serve` on 127.0.0.1, output kept in a log file."""

    def __init__(
        self, data: Path, log: Path, token: str | None = None, port: int | None = None
    ) -> None:
        self.data, self.log_path, self.token = data, log, token
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        cmd = [
            sys.executable,
            "-m",
            "nimsforest",
            "registry",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data",
            str(self.data),
        ]
        if self.token:
            env["REGISTRY_TOKEN"] = self.token  # the env fallback, not a flag
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"registry exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if (
                    httpx.get(f"{self.url}/v1/health", headers=self.headers, timeout=1).status_code
                    == 200
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.03)
        raise RuntimeError(f"registry did not become healthy:\n{self.log()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        assert self.proc is not None
        freeze(self.proc.pid)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """One shared server; tests isolate themselves with their own service name."""
    base = tmp_path_factory.mktemp("registry")
    server = RegistryProcess(base / "data", base / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    base = tmp_path_factory.mktemp("registry-token")
    server = RegistryProcess(base / "data", base / "server.log", token="s3cret-token")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RegistryProcess]:
    """A server of this test alone (not started), for restarts, outages and SIGSTOP."""
    server = RegistryProcess(tmp_path / "registry-data", tmp_path / "server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def service() -> str:
    return f"svc-{uuid.uuid4().hex[:12]}"


class FakeHttp:
    """A tiny HTTP server whose answers a test chooses: garbage, hangs, index-less lists.

    `handler(method, target, body)` returns the raw bytes to send (the connection is
    closed after each answer) or None to hang until the client gives up.
    """

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.requests: list[tuple[str, str]] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in list(self._tasks):
                task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            line = await reader.readline()
            if not line:
                return
            method, target, _ = line.decode("latin-1").split(" ", 2)
            length = 0
            while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = header.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            self.requests.append((method, target))
            answer = self.handler(method, target, body)
            if answer is None:
                await asyncio.sleep(3600)
                return
            writer.write(answer)
            await writer.drain()
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()


def http_answer(
    status: int, body: bytes | str | Any, headers: dict[str, str] | None = None
) -> bytes:
    """Raw HTTP/1.1 response bytes; a non-bytes, non-str body is sent as JSON."""
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
        headers = {"Content-Type": "application/json", **(headers or {})}
    data = body.encode() if isinstance(body, str) else body
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(data)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


@pytest.fixture
async def fake_http() -> Any:
    """Start FakeHttp servers with `await fake_http(handler)`; all stopped afterwards."""
    started: list[FakeHttp] = []

    async def make(handler: Any) -> FakeHttp:
        server = FakeHttp(handler)
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()
