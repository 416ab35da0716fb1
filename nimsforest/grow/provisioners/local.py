"""`local`: another node on this machine, for development and tests.

It starts `nimsforest run` as a detached process (its own session, so it outlives
`grow`) on the next 127.0.0.x address no node of the forest uses, with free ports,
pointing at the forest's registry (and NATS_CLUSTER_SECRET, passed in the environment).
Its files are in `<state dir>/local-nodes/<name>/`: data/, node.log, node.pid and
node.json (addresses and ports). It counts as provisioned once the new node's /health
answers 200 and its /health/cluster shows it in a cluster with at least one peer;
otherwise it is stopped and the failure reported with the last line of its log.

Stop such a node with `kill $(cat <dir>/node.pid)` (SIGTERM: it deregisters and stops
in order). Options (`--provisioner-option`): host=ADDRESS to choose the address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import httpx
import psutil

from natsembed import free_port, hostport
from nimsforest.grow.provisioners import ProvisionerError, ProvisionRequest, ProvisionResult
from nimsforest.settings import api_headers


@dataclass(frozen=True)
class LocalNode:
    """What node.json says about a node the local provisioner started."""

    name: str
    pid: int
    host: str
    client_port: int
    cluster_port: int
    monitor_port: int
    api_port: int
    log: str

    @property
    def api_url(self) -> str:
        return f"http://{hostport(self.host, self.api_port)}"


def local_nodes(workdir: Path) -> list[LocalNode]:
    """Every node the local provisioner started under `workdir` (running or not)."""
    out = []
    for info in sorted((workdir / "local-nodes").glob("*/node.json")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            out.append(LocalNode(**json.loads(info.read_text())))
    return out


def next_loopback(used: set[str]) -> str:
    """The first 127.0.0.x (x >= 1) that no node uses and that can be bound here."""
    for i in range(1, 255):
        host = f"127.0.0.{i}"
        if host in used:
            continue
        try:
            free_port(host)
        except OSError:
            continue
        return host
    raise ProvisionerError("No free 127.0.0.x address is left for a local node.")


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "an empty log"


class LocalProvisioner:
    name = "local"

    def __init__(self, options: Mapping[str, str]) -> None:
        unknown = set(options) - {"host"}
        if unknown:
            raise ProvisionerError(f"The local provisioner has no option '{sorted(unknown)[0]}' (it knows host).")
        self.host = options.get("host")
        if self.host:
            try:
                ipaddress.ip_address(self.host)
            except ValueError:
                raise ProvisionerError(f"host={self.host} is not an IP address.") from None

    def check(self, request: ProvisionRequest) -> None:
        if not request.registry_url:
            raise ProvisionerError("The local provisioner needs the forest's registry (--registry-url or "
                                   "REGISTRY_URL): a new node finds its peers there.")

    async def provision(self, request: ProvisionRequest) -> ProvisionResult:
        self.check(request)
        name = request.node_name
        node_dir = request.workdir / "local-nodes" / name
        for node in local_nodes(request.workdir):
            if node.name == name and psutil.pid_exists(node.pid):
                return ProvisionResult(False, name, f"A local node {name} already runs (pid {node.pid}).")
        used = {t.cluster_address.rsplit(":", 1)[0].strip("[]") for t in request.existing if t.cluster_address}
        try:
            host = self.host or next_loopback(used)
            ports = [free_port(host) for _ in range(4)]
        except (ProvisionerError, OSError) as exc:
            return ProvisionResult(False, name, str(exc).rstrip(".") + ".")
        node = LocalNode(name=name, pid=0, host=host, client_port=ports[0], cluster_port=ports[1],
                         monitor_port=ports[2], api_port=ports[3], log=str(node_dir / "node.log"))
        args = [
            sys.executable, "-m", "nimsforest", "run",
            "--node-name", name, "--data-dir", str(node_dir / "data"), "--bind", host,
            "--client-port", str(node.client_port), "--cluster-port", str(node.cluster_port),
            "--monitor-port", str(node.monitor_port), "--api", hostport(host, node.api_port),
            "--registry-url", str(request.registry_url), "--registry-service", request.registry_service,
        ]
        env = dict(os.environ)
        for key, value in (("NATS_CLUSTER_SECRET", request.cluster_secret), ("REGISTRY_TOKEN", request.registry_token)):
            if value:
                env[key] = value  # secrets in the environment, never on the command line
        node_dir.mkdir(parents=True, exist_ok=True)
        with open(node.log, "ab") as log:
            # Detached: its own session, no stdin, its own log; `grow` may exit while it runs.
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True, close_fds=True, cwd=node_dir)
        node = replace(node, pid=proc.pid)
        (node_dir / "node.pid").write_text(f"{proc.pid}\n")
        (node_dir / "node.json").write_text(json.dumps(asdict(node), indent=2) + "\n")

        problem = await self._wait_joined(proc, node, request.timeout)
        if problem is None:
            return ProvisionResult(True, name, f"Started local node {name} at {host} (pid {proc.pid}, "
                                               f"API {node.api_url}); it is healthy and in the cluster.")
        await self._stop(proc)
        return ProvisionResult(False, name, f"Local node {name} {problem}; it was stopped (log: {node.log}).")

    async def _wait_joined(self, proc: subprocess.Popen[bytes], node: LocalNode, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        last = "did not answer"
        async with httpx.AsyncClient(timeout=3, trust_env=False, headers=api_headers()) as client:
            while time.monotonic() < deadline:
                code = proc.poll()
                if code is not None:
                    return f"exited with code {code} before it joined: {_last_line(Path(node.log))}"
                try:
                    health = await client.get(f"{node.api_url}/health")
                    cluster = await client.get(f"{node.api_url}/health/cluster")
                    size = cluster.json().get("size", 0)
                    if health.status_code == 200 and size >= 2:
                        return None
                    last = f"was not in a cluster yet (health {health.status_code}, cluster size {size})"
                except (httpx.HTTPError, ValueError):
                    pass
                await asyncio.sleep(0.5)
        return f"did not join within {timeout:g}s: it {last}"

    async def _stop(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        for _ in range(120):
            if proc.poll() is not None:
                return
            await asyncio.sleep(0.25)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


__all__ = ["LocalNode", "LocalProvisioner", "local_nodes", "next_loopback"]
