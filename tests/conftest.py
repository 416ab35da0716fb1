"""Shared fixtures: real nats-server processes on free ports. NATS is never mocked."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import pytest

from natsembed import EmbeddedConfig, EmbeddedNats, Timeouts
from natsembed._binary import find_nats_server
from nimsforest import natsclient
from tests.grow.support import Load
from tests.support import EmbeddedFactory, _worker_share, free_port


@pytest.fixture(scope="session", autouse=True)
def _port_share() -> None:
    """The servers and nodes a test starts pick their own ports (a witness's, a private
    monitor port) from this worker's share of the pool, as the test's do: another worker
    never takes a port one of them was given but has not bound yet."""
    from natsembed._net import SHARE_VARIABLE

    os.environ[SHARE_VARIABLE] = "{}/{}".format(*_worker_share())


@pytest.fixture(scope="session")
def nats_server_bin() -> Path:
    return find_nats_server()


class PlainNats:
    """A plain single nats-server with JetStream (not clustered), for component tests."""

    def __init__(self, binary: Path, store: Path) -> None:
        self.binary = binary
        self.store = store
        self.port = free_port()
        self.monitor_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(self.binary), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-m", str(self.monitor_port), "-sd", str(self.store)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:  # e.g. its port was taken: never talk to another's
                raise RuntimeError(f"plain nats-server exited with code {self.proc.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1).status_code == 200:
                    if self.proc.poll() is not None:
                        continue  # the answer came from another process on that port
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise RuntimeError("plain nats-server did not become healthy")

    def subscribed(self) -> set[str]:
        """The subjects the server has a subscription on (its /subsz)."""
        subs = httpx.get(f"http://127.0.0.1:{self.monitor_port}/subsz?subs=1", timeout=5).json()
        return {s["subject"] for s in subs.get("subscriptions_list") or ()}

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def plain_nats(tmp_path: Path, nats_server_bin: Path) -> Iterator[PlainNats]:
    server = PlainNats(nats_server_bin, tmp_path / "js")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def nc(plain_nats: PlainNats) -> AsyncIterator[nats.NATS]:
    conn = await natsclient.connect(plain_nats.url)  # the node's client, as the node runs
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[EmbeddedFactory]:
    """Make EmbeddedNats supervisors (a node's nats-server and witness) on free ports; every
    one made is stopped after the test. Keyword arguments override EmbeddedConfig fields."""
    made: list[EmbeddedNats] = []

    def make(name: str = "n1", **kw: object) -> EmbeddedNats:
        params: dict[str, object] = {
            "name": name,
            "data_dir": tmp_path / name,
            "binary": find_nats_server(),
            "client_port": free_port(),
            "cluster_port": free_port(),
            "monitor_port": free_port(),
            "timeouts": Timeouts(start=20, lame_duck=3, interrupt=5),
            "cluster_secret": "s3cret",
        }
        params.update(kw)
        e = EmbeddedNats(EmbeddedConfig(**params))  # type: ignore[arg-type]
        made.append(e)
        return e

    yield make
    for e in made:
        await e.stop()
        await e.close()


@pytest.fixture
def load() -> Iterator[Load]:
    """Synthetic publishing load (grow tests); stopped after the test."""
    generator = Load()
    try:
        yield generator
    finally:
        generator.stop()


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx honours proxy variables; tests talk to loopback only.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")


