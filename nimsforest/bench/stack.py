"""`nimsforest bench stack`: `stack up` to all healthy, next to the same services started bare.

For each round, in the same run and on the same machine, with the default manifests on
free ports in a fresh folder:
- bare: the resolved commands of node, PocketBase and Caddy (exactly what the stack
  runs), started one after another, each once the previous one answered its readiness
  URL; the sum of the three times;
- stack: `nimsforest stack up` spawned -> .nimsforest-stack/state.json says every service
  is healthy (or completed). This includes the supervisor's own start, the PocketBase
  superuser job and the Soil mirror; target: at most 1.2x the bare sum;
- reload: Caddy's manifest changed (its shutdown timeout: a restart) and the stack
  reloaded; the node's /health and PocketBase's /api/health are polled all along: their
  longest run of failed polls is the others' downtime (target: zero), and the time until
  Caddy is healthy again is printed. Then a front-door route is changed: applied live
  through Caddy's admin API, Caddy's own downtime is printed too.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import click
import httpx

from natsembed import free_port
from nimsforest.bench.startup import _stop, _wait_200
from nimsforest.stack import (
    DEFAULT_SERVICES,
    ServiceSpec,
    StackPaths,
    StackStatus,
    desired_services,
    read_status,
)

TARGET_RATIO = 1.2
_ENV = {"POCKETBASE_ADMIN_PASSWORD": "bench-password-1", "NIMSFOREST_LOG_LEVEL": "warning"}
BARE = ("node", "pocketbase", "caddy")


def _root(path: Path) -> StackPaths:
    for src in sorted(DEFAULT_SERVICES.glob("*/service.json")):
        manifest = json.loads(src.read_text())
        for port in manifest.get("ports", {}).values():
            port["port"] = free_port()
        dest = path / "services" / src.parent.name / "service.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(manifest, indent=2))
    return StackPaths.for_root(path)


def _url(spec: ServiceSpec) -> str:
    assert spec.readiness is not None and spec.readiness.http_get is not None
    return spec.readiness.http_get.url


def _env() -> dict[str, str]:
    return {**os.environ, **_ENV}


def _wait_https(url: str, ca: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    client: httpx.Client | None = None
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise click.ClickException(f"{url}: the server exited with code {proc.returncode}")
            if client is None and ca.is_file():
                client = httpx.Client(verify=ssl.create_default_context(cafile=str(ca)),
                                      trust_env=False, timeout=1.0)
            if client is not None:
                try:
                    if client.get(url).status_code == 200:
                        return time.monotonic()
                except (httpx.HTTPError, ssl.SSLError, OSError):
                    pass
            time.sleep(0.005)
    finally:
        if client is not None:
            client.close()
    raise click.ClickException(f"{url} did not answer 200 within {timeout:g}s")


def bare_round(workdir: Path) -> tuple[float, dict[str, float]]:
    """The three services started bare one after another: (sum, time of each)."""
    paths = _root(workdir)
    specs = desired_services(paths, _env()).by_name()
    paths.data.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name in BARE:
            spec = specs[name]
            if spec.config_file is not None:
                spec.config_file.path.parent.mkdir(parents=True, exist_ok=True)
                spec.config_file.path.write_text(spec.config_file.text)
            started = time.monotonic()
            proc = subprocess.Popen(list(spec.argv), env={**_env(), **dict(spec.env)},
                                    cwd=paths.root, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            procs.append(proc)
            url = _url(spec)
            assert spec.readiness is not None and spec.readiness.http_get is not None
            ca = spec.readiness.http_get.ca_file
            ready = _wait_https(url, Path(ca), proc) if ca else _wait_200(url, proc)
            times[name] = ready - started
    finally:
        for proc in reversed(procs):
            _stop(proc)
    return sum(times.values()), times


class _Poller:
    """Polls URLs every 10 ms in a thread; records the longest run of failures of each."""

    def __init__(self, urls: dict[str, str], ca: Path | None = None) -> None:
        self.urls = urls
        self.ca = ca
        self.longest: dict[str, float] = dict.fromkeys(urls, 0.0)
        self._down_since: dict[str, float | None] = dict.fromkeys(urls)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(self.ca)) if self.ca else True
        with httpx.Client(timeout=1.0, trust_env=False, verify=verify) as client:
            while not self._stop.is_set():
                now = time.monotonic()
                for name, url in self.urls.items():
                    try:
                        ok = client.get(url).status_code == 200
                    except (httpx.HTTPError, ssl.SSLError, OSError):
                        ok = False
                    since = self._down_since[name]
                    if ok:
                        self._down_since[name] = None
                    elif since is None:
                        self._down_since[name] = now
                    else:
                        self.longest[name] = max(self.longest[name], now - since)
                time.sleep(0.01)


@dataclass(frozen=True)
class StackRound:
    three: float  # node, pocketbase and caddy healthy (what the bare sum measures)
    up: float  # every service healthy or completed (plus the superuser job and the mirror)
    caddy_back: float
    others_down: float
    live_apply: float
    caddy_down_live: float


def _said(log: Path) -> str:
    """The last line the stack supervisor wrote to `log` (its stderr): why it stopped."""
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return f": {lines[-1][:500]}" if lines else ""


def _wait_status(paths: StackPaths, proc: subprocess.Popen[bytes],
                 ok: Callable[[StackStatus], bool], timeout: float = 120.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"the stack supervisor exited with code {proc.returncode}"
                                       f"{_said(_stderr(paths))}")
        status = read_status(paths.stack)
        if status is not None and status.supervisor_pid == proc.pid and ok(status):
            return time.monotonic()
        time.sleep(0.005)
    raise click.ClickException(f"the stack was not as expected within {timeout:g}s")


def _has_route(admin: str, path: str) -> bool:
    """Whether Caddy's admin API shows `path` in its config (False while it is reloading:
    Caddy may reset the connection of a request that arrives during a load)."""
    try:
        return path in httpx.get(admin, trust_env=False).text
    except httpx.HTTPError:
        return False


def _stderr(paths: StackPaths) -> Path:
    return paths.root / "stack-up.stderr"


def stack_round(workdir: Path) -> StackRound:
    paths = _root(workdir)
    specs = desired_services(paths, _env()).by_name()
    started = time.monotonic()
    paths.root.mkdir(parents=True, exist_ok=True)
    with _stderr(paths).open("wb") as stderr:  # the supervisor's sentences, if it stops
        proc = subprocess.Popen(
            [sys.executable, "-m", "nimsforest", "stack", "up", "--root", str(paths.root)],
            env=_env(), stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        three = _wait_status(paths, proc, lambda s: all(
            (svc := s.service(n)) is not None and svc.settled for n in BARE)) - started
        up = _wait_status(paths, proc, lambda s: s.settled) - started
        caddy_pid = read_status(paths.stack).service("caddy").pid  # type: ignore[union-attr]
        manifest = paths.services / "caddy" / "service.json"
        ca = paths.data / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        others = {"node": _url(specs["node"]), "pocketbase": _url(specs["pocketbase"])}
        with _Poller(others) as poller:
            doc = json.loads(manifest.read_text())
            doc["process"]["compose"]["shutdown"]["timeout_seconds"] = 9
            manifest.write_text(json.dumps(doc, indent=2))
            sent = time.monotonic()
            os.kill(proc.pid, signal.SIGHUP)

            def caddy_new(s: StackStatus) -> bool:
                c = s.service("caddy")
                return c is not None and c.pid not in (None, caddy_pid) and s.settled

            caddy_back = _wait_status(paths, proc, caddy_new) - sent
            time.sleep(0.5)
        others_down = max(poller.longest.values())
        admin = f"http://127.0.0.1:{dict(specs['caddy'].ports)['admin'].port}/config/"
        https = f"https://localhost:{dict(specs['caddy'].ports)['https'].port}/caddy/health"
        with _Poller({"caddy": https}, ca) as caddy_poller:
            doc["config"]["front_door"]["routes"].insert(
                0, {"paths": ["/bench/*"], "service": "pocketbase", "port": "http"})
            manifest.write_text(json.dumps(doc, indent=2))
            sent = time.monotonic()
            os.kill(proc.pid, signal.SIGHUP)
            deadline = time.monotonic() + 30
            while not _has_route(admin, "/bench/*"):
                if time.monotonic() > deadline:
                    raise click.ClickException("the new route was not applied within 30s")
                time.sleep(0.005)
            live = time.monotonic() - sent
            time.sleep(0.5)
        return StackRound(three, up, caddy_back, others_down, live, caddy_poller.longest["caddy"])
    finally:
        _stop(proc)


@click.command("stack")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 20),
              help="Bare starts and stack starts (medians are printed).")
def command(rounds: int) -> None:
    """Time `stack up` to all healthy vs the three services started bare; time a reload."""
    bare: list[float] = []
    parts: dict[str, list[float]] = {n: [] for n in BARE}
    runs: list[StackRound] = []
    with tempfile.TemporaryDirectory(prefix="nimsforest-bench-stack-") as tmp:
        for i in range(rounds):
            total, times = bare_round(Path(tmp) / f"bare{i}")
            bare.append(total)
            for n, t in times.items():
                parts[n].append(t)
            runs.append(stack_round(Path(tmp) / f"stack{i}"))
    b = statistics.median(bare)
    three = statistics.median(r.three for r in runs)
    up = statistics.median(r.up for r in runs)
    ratio = three / b
    click.echo(f"rounds: {rounds} (fresh folder each time)")
    click.echo(f"bare, one after another -> ready: median {b:.3f}s  (all: {_fmt(bare)}; "
               + ", ".join(f"{n} {statistics.median(v):.3f}s" for n, v in parts.items()) + ")")
    click.echo(f"nimsforest stack up -> node, pocketbase, caddy healthy: median {three:.3f}s  "
               f"(all: {_fmt([r.three for r in runs])})")
    click.echo(f"stack/bare: {ratio:.2f}x (target <= {TARGET_RATIO:.1f}x: "
               f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})")
    click.echo(f"nimsforest stack up -> every service healthy (with the superuser job and the "
               f"Soil mirror): median {up:.3f}s ({up / b:.2f}x the bare sum)")
    down = max(r.others_down for r in runs)
    click.echo(f"reload of caddy (restart): back to healthy in median "
               f"{statistics.median(r.caddy_back for r in runs):.3f}s; the others' longest downtime "
               f"{down:.3f}s (target 0: {'met' if down == 0 else 'NOT met'})")
    click.echo(f"reload of a front-door route (live, no restart): applied in median "
               f"{statistics.median(r.live_apply for r in runs):.3f}s; caddy's longest downtime "
               f"{max(r.caddy_down_live for r in runs):.3f}s")


def _fmt(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)
