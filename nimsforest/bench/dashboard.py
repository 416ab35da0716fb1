"""`nimsforest bench dashboard`: what the dashboard at /ui costs, next to a baseline from the
same run on the same node.

One standalone node runs a forest of N treehouses (default 50, a chain of subjects). Then:
- state: the time from opening /ui/events to its first `state` event (all the page shows
  but the leaves and Soil), median of R rounds, next to GET /health (the same snapshot's
  smallest document) in the same rounds;
- first paint: with selenium and Debian's chromium (`make browser-deps`), the time from
  navigating to /ui to the page showing all N components, as the browser's own clock
  measures it, next to the same browser navigating to /health; skipped without them;
- CPU: the node process's CPU over S seconds with nothing open (the baseline), then with
  one dashboard's three streams open (its state, the leaf tail and the Soil watch), as a
  share of one core (target: at most 2% more).
One node only: a three-node forest's page is not measured here.
"""

from __future__ import annotations

import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import httpx
import psutil

from natsembed import free_port

TARGET_PAINT_S = 1.0
TARGET_CPU_PCT = 2.0
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def forest_yaml(workdir: Path, components: int) -> Path:
    """A forest of `components` treehouses, each passing nothing on (an idle forest)."""
    (workdir / "noop.lua").write_text("function process(input)\n  return nil\nend\n")
    lines = ["treehouses:"]
    for i in range(components):
        lines += [f"  th{i:03d}:", f"    subscribes: bench.s{i}", f"    publishes: bench.s{i + 1}",
                  "    script: noop.lua"]
    path = workdir / "forest.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_node(workdir: Path, config: Path) -> tuple[subprocess.Popen[bytes], str]:
    api = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nimsforest", "standalone", "--node-name", "bench",
         "--data-dir", str(workdir / "data"), "--forest-config", str(config),
         "--client-port", str(free_port()), "--cluster-port", str(free_port()),
         "--monitor-port", str(free_port()), "--api", f"127.0.0.1:{api}",
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{api}"
    deadline = time.monotonic() + 90
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise click.ClickException(f"the benchmark's node exited with {proc.returncode}")
            try:
                if client.get(url + "/health").status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    proc.kill()
    raise click.ClickException("the benchmark's node did not become healthy in 90 s")


def first_state(client: httpx.Client) -> float:
    """Seconds from opening /ui/events to its first `state` event."""
    started = time.perf_counter()
    with client.stream("GET", "/ui/events") as resp:
        for line in resp.iter_lines():
            if line.startswith("event: state"):
                return time.perf_counter() - started
    raise click.ClickException("/ui/events ended before its first state")


def health_time(client: httpx.Client) -> float:
    started = time.perf_counter()
    client.get("/health")
    return time.perf_counter() - started


def paints(url: str, components: int, rounds: int) -> tuple[list[float], list[float]] | None:
    """The browser's times to /health and to /ui showing every component, or None without
    selenium or Debian's chromium."""
    if importlib.util.find_spec("selenium") is None or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tempfile.mkdtemp(prefix="nimsforest-bench-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1300", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_script_timeout(30)
    cards = f'document.querySelectorAll("[data-component]").length >= {components}'
    bare: list[float] = []
    page: list[float] = []
    try:
        for _ in range(rounds):
            driver.get(url + "/health")
            bare.append(driver.execute_script(
                "const t = performance.getEntriesByType('navigation')[0];"
                "return (t.loadEventEnd || performance.now()) / 1000;"))
            driver.get("about:blank")
            driver.get(url + "/ui")
            # the first animation frame in which every component is on the page
            page.append(driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                f"(function look() {{ if ({cards}) done(performance.now() / 1000);"
                " else requestAnimationFrame(look); })();"))
            driver.get("about:blank")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return bare, page


def cpu_share(proc: psutil.Process, seconds: float) -> float:
    """The process's CPU over `seconds`, in % of one core."""
    before = sum(proc.cpu_times()[:2])
    started = time.monotonic()
    time.sleep(seconds)
    return (sum(proc.cpu_times()[:2]) - before) / (time.monotonic() - started) * 100


def open_streams(url: str) -> list[subprocess.Popen[bytes]]:
    """One dashboard's three streams, held open by curl-like readers in child processes."""
    code = ("import httpx,sys\nwith httpx.stream('GET', sys.argv[1], timeout=None, trust_env=False) as r:\n"
            "    for _ in r.iter_bytes(): pass\n")
    return [subprocess.Popen([sys.executable, "-c", code, url + path], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
            for path in ("/ui/events", "/api/v1/leaves/tail", "/api/v1/soil/watch")]


@click.command("dashboard")
@click.option("--components", default=50, show_default=True, type=click.IntRange(1, 500),
              help="Treehouses in the forest the page shows.")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1, 50),
              help="Rounds of the state and first-paint measures (medians are printed).")
@click.option("--seconds", default=20.0, show_default=True, type=click.FloatRange(1, 600),
              help="Length of each CPU window (without, then with the page).")
def command(components: int, rounds: int, seconds: float) -> None:
    """The dashboard's first state, first paint and idle CPU, next to the same node's
    /health and its CPU without the page."""
    with tempfile.TemporaryDirectory(prefix="nimsforest-bench-") as tmp:
        workdir = Path(tmp)
        proc, url = start_node(workdir, forest_yaml(workdir, components))
        try:
            with httpx.Client(base_url=url, timeout=30.0, trust_env=False) as client:
                shown = len(client.get("/api/v1/status").json()["components"])
                health = [health_time(client) for _ in range(rounds)]
                state = [first_state(client) for _ in range(rounds)]
            painted = paints(url, components, rounds)
            node = psutil.Process(proc.pid)
            time.sleep(2)  # the start-up's last work out of the way
            idle = cpu_share(node, seconds)
            readers = open_streams(url)
            try:
                time.sleep(1)
                busy = cpu_share(node, seconds)
            finally:
                for r in readers:
                    r.terminate()
                    r.wait(10)
        finally:
            proc.terminate()
            proc.wait(30)
    click.echo(f"one standalone node, a forest of {shown} components, {rounds} rounds")
    click.echo(f"GET /health (baseline):             median {statistics.median(health) * 1000:.1f} ms")
    click.echo(f"/ui/events to its first state:      median {statistics.median(state) * 1000:.1f} ms")
    if painted is None:
        click.echo("first paint: skipped (needs selenium and Debian's chromium: make browser-deps)")
    else:
        bare, page = (statistics.median(p) for p in painted)
        click.echo(f"browser, /health loaded (baseline): median {bare:.3f}s")
        click.echo(f"browser, /ui showing {components} components: median {page:.3f}s "
                   f"(target <= {TARGET_PAINT_S:.1f}s: {'met' if page <= TARGET_PAINT_S else 'NOT met'})")
    extra = busy - idle
    click.echo(f"node CPU, nothing open (baseline):  {idle:.2f}% of a core over {seconds:g}s")
    click.echo(f"node CPU, one dashboard open:       {busy:.2f}% of a core "
               f"({extra:+.2f}%, target <= +{TARGET_CPU_PCT:.0f}%: "
               f"{'met' if extra <= TARGET_CPU_PCT else 'NOT met'})")
