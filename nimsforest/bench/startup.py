"""`nimsforest bench startup`: time to a serving node, next to bare nats-server.

For each round, in the same run and on the same machine:
- bare: `nats-server -js` spawned -> its /healthz answers 200;
- nimsforest: `nimsforest standalone` spawned -> GET /health answers 200, which means
  nats-server and its witness are up, JetStream has a meta leader and RIVER, HUMUS and
  KV SOIL exist at R1.
It prints both medians, the difference (target: at most 1.0 s), the slowest start (target:
none over 2 s), the supervisor's CPU time until ready (user + system: the figure that
moves least with the machine's load, so compare it across runs and commits) and its
resident memory once ready (target: at most 80 MB; nats-server's own memory is not ours).
"""

from __future__ import annotations

import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import httpx
import psutil

from natsembed import find_nats_server, free_port

TARGET_EXTRA_S = 1.0
TARGET_RSS_MB = 80.0
TARGET_MAX_S = 2.0


def _wait_200(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    """When `url` first answers 200. Until its port accepts connections, only a TCP
    connect is tried (cheap): an HTTP client polling every 5 ms would take CPU from the
    process being measured."""
    parsed = httpx.URL(url)
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise click.ClickException(f"{proc.args!r} exited with code {proc.returncode}")
            try:
                socket.create_connection((parsed.host, parsed.port or 80), 1.0).close()
                if client.get(url).status_code == 200:
                    return time.monotonic()
            except (OSError, httpx.HTTPError):
                pass
            time.sleep(0.005)
    raise click.ClickException(f"{url} did not answer 200 within {timeout:g}s")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bare_round(binary: Path, workdir: Path) -> float:
    port, mport = free_port(), free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(binary), "-js", "-a", "127.0.0.1", "-p", str(port), "-m", str(mport), "-sd", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        return _wait_200(f"http://127.0.0.1:{mport}/healthz", proc) - started
    finally:
        _stop(proc, signal.SIGINT)


def node_round(workdir: Path) -> tuple[float, float, float]:
    api = free_port()
    args = [
        sys.executable, "-m", "nimsforest", "standalone",
        "--node-name", "bench", "--data-dir", str(workdir),
        "--client-port", str(free_port()), "--cluster-port", str(free_port()),
        "--monitor-port", str(free_port()), "--api", f"127.0.0.1:{api}", "--log-level", "warning",
    ]
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        elapsed = _wait_200(f"http://127.0.0.1:{api}/health", proc) - started
        supervisor = psutil.Process(proc.pid)
        cpu = supervisor.cpu_times()
        rss = supervisor.memory_info().rss / (1024 * 1024)
        return elapsed, cpu.user + cpu.system, rss
    finally:
        _stop(proc)


@click.command("startup")
@click.option("--rounds", default=15, show_default=True, type=click.IntRange(1, 50),
              help="Starts of each kind (medians are printed, and the slowest start: a lost "
                   "first node-witness election is rare, so use enough rounds).")
def command(rounds: int) -> None:
    """Time from start to serving: `nimsforest standalone` vs bare `nats-server -js`."""
    binary = find_nats_server()
    bare: list[float] = []
    node: list[float] = []
    cpu: list[float] = []
    rss: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nimsforest-bench-") as tmp:
        for i in range(rounds):
            bare.append(bare_round(binary, Path(tmp) / f"bare{i}"))
            t, c, r = node_round(Path(tmp) / f"node{i}")
            node.append(t)
            cpu.append(c)
            rss.append(r)
    b, n, r = statistics.median(bare), statistics.median(node), statistics.median(rss)
    extra = n - b
    click.echo(f"rounds: {rounds} (first boot, fresh data dir each time)")
    click.echo(f"bare nats-server -js  -> /healthz 200: median {b:.3f}s  (all: {_fmt(bare)})")
    click.echo(f"nimsforest standalone -> /health 200:  median {n:.3f}s  (all: {_fmt(node)})")
    click.echo(f"added by NimsForest: {extra:.3f}s (target <= {TARGET_EXTRA_S:.1f}s: "
               f"{'met' if extra <= TARGET_EXTRA_S else 'NOT met'})")
    slowest = max(node)
    click.echo(f"slowest start: {slowest:.3f}s (target: none over {TARGET_MAX_S:.0f}s: "
               f"{'met' if slowest <= TARGET_MAX_S else 'NOT met'})")
    click.echo(f"supervisor CPU until ready (user+system): median {statistics.median(cpu):.3f}s "
               f"(all: {_fmt(cpu)})")
    click.echo(f"supervisor RSS when ready: median {r:.1f} MB (target <= {TARGET_RSS_MB:.0f} MB: "
               f"{'met' if r <= TARGET_RSS_MB else 'NOT met'})")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)
