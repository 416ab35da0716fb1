"""`nimsforest bench dashboard`: what the dashboard at /ui costs, next to a baseline from the
same run on the same node.

A forest of N treehouses (default 50, a chain of subjects) runs on M nodes (default 3: a
registry and three `nimsforest run` processes on 127.0.0.1-3, a real cluster, every stream
at R3; `--nodes 1`: one standalone node). Then, against the first node:
- state: the time from opening /ui/events to its first `state` event (all the page shows
  but the leaves and Soil), median of R rounds, next to GET /health (the same snapshot's
  smallest document) in the same rounds;
- first paint: with selenium and Debian's chromium (`make browser-deps`), the time from
  navigating to /ui to the first frame showing all N components and all M nodes with
  their report, as the browser's own clock measures it (`performance.now()`, from the
  navigation's start), next to the same browser navigating to /health (target: 1 s);
- CPU: the node process's CPU over S seconds with nothing open (the baseline), then with
  one dashboard's three streams open (its state, the leaf tail and the Soil watch), as a
  share of one core (target: at most 2% more).
Without selenium or the browser the bench says so in one sentence and exits 2.
"""

from __future__ import annotations

import importlib.util
import os
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
from nimsforest.bench.cluster import HOSTS, SECRET, cluster_ready, start_registry

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
    try:
        _healthy(url, proc, "the benchmark's node", 90)
    except BaseException:
        proc.kill()
        raise
    return proc, url


def _healthy(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise click.ClickException(f"{what} exited with {proc.returncode}")
            try:
                if client.get(url + "/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise click.ClickException(f"{what} did not become healthy in {timeout:.0f} s")


def start_cluster(workdir: Path, config: Path, nodes: int
                  ) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """A registry and `nodes` node processes (n1.. on 127.0.0.1..), each given forest.yaml
    (the first seeds the desired state, the others take the cluster's); the processes
    (registry last) and the nodes' API URLs, once the cluster has every node and every
    stream at its replication factor, all replicas current."""
    registry, reg_url = start_registry(workdir)
    procs: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    try:
        for i in range(nodes):
            host, name = HOSTS[i], f"n{i + 1}"
            ports = [free_port(host) for _ in range(4)]
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "nimsforest", "run", "--node-name", name,
                 "--data-dir", str(workdir / name), "--client-port", str(ports[0]),
                 "--cluster-port", str(ports[1]), "--monitor-port", str(ports[2]),
                 "--api", f"{host}:{ports[3]}", "--bind", host, "--registry-url", reg_url,
                 "--cluster-secret", SECRET, "--forest-config", str(config),
                 "--log-level", "warning"],
                env={**os.environ, "REGISTRY_HEARTBEAT_INTERVAL": "1s"},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            urls.append(f"http://{host}:{ports[3]}")
            _healthy(urls[-1], procs[-1], f"node {name}")
        deadline = time.monotonic() + 120
        while not cluster_ready(urls[0], nodes):
            if time.monotonic() > deadline:
                raise click.ClickException(f"the {nodes} nodes did not form a cluster in 120 s")
            time.sleep(0.2)
    except BaseException:
        stop_all([*procs, registry])
        raise
    return [*procs, registry], urls


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every process at once, then wait for each (a drain-first stop each)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_forest(client: httpx.Client, components: int, nodes: int, timeout: float = 120.0) -> int:
    """Until /api/v1/status shows `components` running on `nodes` reporting nodes; how
    many it shows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = client.get("/api/v1/status").json()
        running = [c for c in doc["components"]
                   if c["state"] == "running" and len(c.get("nodes") or []) >= nodes]
        if len(running) >= components and sum(n["reporting"] for n in doc["nodes"]) >= nodes:
            return len(doc["components"])
        time.sleep(0.2)
    raise click.ClickException(f"the forest's {components} components did not run on "
                               f"{nodes} node(s) in {timeout:.0f} s")


def browser_missing() -> str | None:
    """The sentence saying what the first paint needs, or None when it is there."""
    if importlib.util.find_spec("selenium") is None:
        return ("bench dashboard needs selenium (a test extra: pip install -e '.[test]') to "
                "measure the page's first paint in a real browser.")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        return ("bench dashboard needs Debian's chromium and chromium-driver "
                "(make browser-deps) to measure the page's first paint.")
    return None


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


def paints(url: str, components: int, nodes: int, rounds: int
           ) -> tuple[list[float], list[float]]:
    """The browser's times to /health loaded and to /ui showing every component and every
    node with its report (its own clock, from the navigation's start)."""
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
    shown = (f'document.querySelectorAll("[data-component]").length >= {components} && '
             f'[...document.querySelectorAll("#nodes tr[data-node]")].filter('
             f'(r) => r.textContent.includes("MiB")).length >= {nodes}')
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
            # the first animation frame in which every component and node is on the page
            page.append(driver.execute_async_script(
                "const done = arguments[arguments.length - 1];"
                f"(function look() {{ if ({shown}) done(performance.now() / 1000);"
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
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 3),
              help="Nodes the forest runs on (1: one standalone node; 2 or 3: a cluster).")
@click.option("--rounds", default=5, show_default=True, type=click.IntRange(1, 50),
              help="Rounds of the state and first-paint measures (medians are printed).")
@click.option("--seconds", default=20.0, show_default=True, type=click.FloatRange(1, 600),
              help="Length of each CPU window (without, then with the page).")
def command(components: int, nodes: int, rounds: int, seconds: float) -> None:
    """The dashboard's first state, first paint (in Debian's chromium, through selenium)
    and idle CPU with a forest of COMPONENTS on NODES, next to the same node's /health and
    its CPU without the page. Exits 2 when selenium or the browser is missing."""
    missing = browser_missing()
    if missing:
        click.echo(missing, err=True)
        sys.exit(2)
    with tempfile.TemporaryDirectory(prefix="nimsforest-bench-") as tmp:
        workdir = Path(tmp)
        config = forest_yaml(workdir, components)
        if nodes == 1:
            proc, url = start_node(workdir, config)
            procs = [proc]
        else:
            procs, urls = start_cluster(workdir, config, nodes)
            proc, url = procs[0], urls[0]
        try:
            with httpx.Client(base_url=url, timeout=30.0, trust_env=False) as client:
                shown = wait_forest(client, components, nodes)
                health = [health_time(client) for _ in range(rounds)]
                state = [first_state(client) for _ in range(rounds)]
            bare_paint, page_paint = paints(url, components, nodes, rounds)
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
            stop_all(procs)
    where = "one standalone node" if nodes == 1 else f"{nodes} nodes (a cluster, streams at R{min(nodes, 3)})"
    click.echo(f"{where}, a forest of {shown} components, {rounds} rounds, measured on node n1")
    click.echo(f"GET /health (baseline):             median {statistics.median(health) * 1000:.1f} ms")
    click.echo(f"/ui/events to its first state:      median {statistics.median(state) * 1000:.1f} ms")
    bare, page = statistics.median(bare_paint), statistics.median(page_paint)
    click.echo(f"browser, /health loaded (baseline): median {bare:.3f}s")
    click.echo(f"browser, /ui showing {components} components on {nodes} node(s): median {page:.3f}s "
               f"(max {max(page_paint):.3f}s; target <= {TARGET_PAINT_S:.1f}s: "
               f"{'met' if page <= TARGET_PAINT_S else 'NOT met'})")
    extra = busy - idle
    click.echo(f"node CPU, nothing open (baseline):  {idle:.2f}% of a core over {seconds:g}s")
    click.echo(f"node CPU, one dashboard open:       {busy:.2f}% of a core "
               f"({extra:+.2f}%, target <= +{TARGET_CPU_PCT:.0f}%: "
               f"{'met' if extra <= TARGET_CPU_PCT else 'NOT met'})")
