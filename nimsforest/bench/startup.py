"""`nimsforest bench startup`: time to a serving node, next to bare nats-server.

For each round, in the same run and on the same machine:
- bare: `nats-server -js` spawned -> its /healthz answers 200;
- nimsforest: `nimsforest standalone` spawned -> GET /health answers 200, which means
  nats-server and its witness are up, JetStream has a meta leader and RIVER, HUMUS and
  KV SOIL exist at R1.
Each is started three times on one directory: a first boot (fresh directory), stopped
gracefully (nats-server: SIGINT; nimsforest: SIGTERM); a restart on the existing store,
killed with SIGKILL; and a restart after that kill (a lone node's restarted meta group
must elect again: see natsembed._election).
It prints the medians of each kind, the difference of first boots (target: at most 1.0 s),
the slowest start of each kind (target: none over 2 s), the supervisor's CPU time until
ready at a first boot (user + system: the figure that moves least with the machine's load,
so compare it across runs and commits) and its resident memory once ready (target: at
most 80 MB; nats-server's own memory is not ours).
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


# the starts of a round, each on the directory of the one before, and how each is ended
# (nimsforest's signal, nats-server's): graceful; kill -9; graceful
KINDS = ("first boot", "restart after a graceful stop", "restart after kill -9")
STOPS = ((signal.SIGTERM, signal.SIGINT), (signal.SIGKILL, signal.SIGKILL), (signal.SIGTERM, signal.SIGINT))


def bare_round(binary: Path, workdir: Path, stop: int = signal.SIGINT) -> float:
    port, mport = free_port(), free_port()
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(binary), "-js", "-a", "127.0.0.1", "-p", str(port), "-m", str(mport), "-sd", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        return _wait_200(f"http://127.0.0.1:{mport}/healthz", proc) - started
    finally:
        _stop(proc, stop)


def node_round(workdir: Path, stop: int = signal.SIGTERM) -> tuple[float, float, float]:
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
        children = _children(proc.pid)
        _stop(proc, stop)
        # a SIGKILLed supervisor's nats-servers die with it (PR_SET_PDEATHSIG): wait for it
        psutil.wait_procs(children, timeout=10)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@click.command("startup")
@click.option("--rounds", default=15, show_default=True, type=click.IntRange(1, 50),
              help="Rounds of three starts each (a first boot, a restart after a graceful "
                   "stop, a restart after kill -9); medians are printed, and the slowest "
                   "start of each kind: a lost election is rare, so use enough rounds.")
def command(rounds: int) -> None:
    """Time from start to serving: `nimsforest standalone` vs bare `nats-server -js`,
    at a first boot and restarted on the existing store (after a graceful stop and after
    kill -9)."""
    binary = find_nats_server()
    bare: list[list[float]] = [[] for _ in KINDS]
    node: list[list[float]] = [[] for _ in KINDS]
    cpu: list[float] = []
    rss: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nimsforest-bench-") as tmp:
        for i in range(rounds):
            for k, (node_stop, bare_stop) in enumerate(STOPS):
                bare[k].append(bare_round(binary, Path(tmp) / f"bare{i}", bare_stop))
                t, c, r = node_round(Path(tmp) / f"node{i}", node_stop)
                node[k].append(t)
                if k == 0:
                    cpu.append(c)
                    rss.append(r)
    click.echo(f"rounds: {rounds} (a fresh directory each round, started three times)")
    for k, kind in enumerate(KINDS):
        b, n = statistics.median(bare[k]), statistics.median(node[k])
        click.echo(f"{kind}:")
        click.echo(f"  bare nats-server -js  -> /healthz 200: median {b:.3f}s  (all: {_fmt(bare[k])})")
        click.echo(f"  nimsforest standalone -> /health 200:  median {n:.3f}s  (all: {_fmt(node[k])})")
        if k == 0:
            extra = n - b
            click.echo(f"  added by NimsForest: {extra:.3f}s (target <= {TARGET_EXTRA_S:.1f}s: "
                       f"{'met' if extra <= TARGET_EXTRA_S else 'NOT met'})")
        slowest = max(node[k])
        click.echo(f"  slowest: {slowest:.3f}s (target: none over {TARGET_MAX_S:.0f}s: "
                   f"{'met' if slowest <= TARGET_MAX_S else 'NOT met'})")
    click.echo(f"supervisor CPU until ready (user+system): median {statistics.median(cpu):.3f}s "
               f"(all: {_fmt(cpu)})")
    click.echo(f"supervisor RSS when ready: median {r:.1f} MB (target <= {TARGET_RSS_MB:.0f} MB: "
               f"{'met' if r <= TARGET_RSS_MB else 'NOT met'})")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)
