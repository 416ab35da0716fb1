"""`nimsforest bench nim`: a nim in front of a local OpenAI-compatible server that
answers after a fixed latency, on one node (a nats-server started for the bench).

The ceiling is what the brain's concurrency allows at that latency: concurrency / latency
events per second (the server, in a process of its own, answers every request it gets
in parallel, keeping connections alive). The figures: the same-run baseline, a bare httpx
client (configured as a brain's) sending as many requests at the same concurrency to the
same server, which is what the HTTP path alone reaches; the nim's rate against the ceiling
(target at least 90%) and against that baseline; then the same run with one answer in ten
a 429 (Retry-After: 0) and the events that completed (target: all of them).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import nats

from natsembed import free_port
from nimsforest.bench.pipeline import Result, _drive, _runner, _start_server


class _Server:
    """The local OpenAI-compatible server, in a process of its own."""

    def __init__(self, latency: float, every_429: int) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nimsforest.bench.llmserver", str(self.port), str(latency),
             str(every_429)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise click.ClickException("the benchmark's LLM server did not start.")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def _bare_run(events: int, concurrency: int, latency: float) -> float:
    """Requests per second of a bare httpx client at `concurrency` (the baseline)."""
    import httpx

    server = _Server(latency, 0)
    client = httpx.AsyncClient(
        timeout=httpx.Timeout(30.0), trust_env=False,
        limits=httpx.Limits(max_connections=concurrency,
                            max_keepalive_connections=concurrency))
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            r = await client.post(server.url + "/chat/completions", json={
                "model": "bench", "messages": [{"role": "user", "content": f"b-{i}"}]})
            r.json()

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(events)))
        return events / (time.perf_counter() - t0)
    finally:
        await client.aclose()
        server.stop()


async def _nim_run(url: str, events: int, concurrency: int, latency: float,
                   every_429: int) -> Result:
    from nimsforest.forest import Forest, ForestConfig, parse_forest_config
    from nimsforest.forest.leaf import Leaf

    server = _Server(latency, every_429)
    nc = await nats.connect(url)
    cfg: ForestConfig = parse_forest_config({"nims": {"bench": {
        "subscribes": "bench.in", "publishes": "bench.out.{id}", "template": "{{ id }}",
        "humus": {"enabled": False},
        "brain": {"type": "openai", "base_url": server.url, "model": "bench",
                  "concurrency": concurrency, "retries": 5, "backoff": 0},
    }}}, base_dir=Path.cwd())
    forest = Forest(nc, cfg)
    await forest.start()
    js = nc.jetstream()
    try:
        return await _drive(
            nc, events, 4 * concurrency,
            lambda i: js.publish_async(
                "wind.bench.in", Leaf.new("bench.in", {"id": f"b-{i}"}, "bench").to_json()),
            "wind.bench.out.>",
        )
    finally:
        await forest.stop()
        await nc.close()
        server.stop()


async def _run(events: int, concurrency: int, latency: float
               ) -> tuple[float, list[tuple[int, Result]]]:
    store = Path(tempfile.mkdtemp(prefix="nimsforest-bench-nim-"))
    proc, url = _start_server(store)
    try:
        bare = await _bare_run(events, concurrency, latency)
        return bare, [(every, await _nim_run(url, events, concurrency, latency, every))
                      for every in (0, 10)]
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(store, ignore_errors=True)


@click.command("nim")
@click.option("--events", default=400, show_default=True, help="Events per run.")
@click.option("--concurrency", default=16, show_default=True, help="The brain's concurrency.")
@click.option("--latency", default=0.2, show_default=True, help="The server's answer time (s).")
def command(events: int, concurrency: int, latency: float) -> None:
    """A nim (openai brain) in front of a local server answering after --latency: its rate
    against the ceiling concurrency/latency, then with one answer in ten a 429."""
    ceiling = concurrency / latency
    click.echo(f"nim: concurrency {concurrency}, server latency {latency * 1000:.0f} ms, "
               f"{events} events per run")
    click.echo(f"ceiling (concurrency / latency): {ceiling:8.1f} events/s")
    bare, runs = _runner(_run(events, concurrency, latency))
    click.echo(f"baseline, bare httpx:  {bare:8.1f} requests/s ({bare / ceiling:.0%} of the "
               "ceiling; the same server and concurrency, no nim)")
    for every, r in runs:
        label = "with 10% 429:" if every else "clean:       "
        click.echo(f"{label} {r.rate:8.1f} events/s ({r.rate / ceiling:.0%} of the ceiling, "
                   f"{r.rate / bare:.0%} of the baseline)   "
                   f"p50 {r.pct(50):7.1f} ms   p99 {r.pct(99):7.1f} ms   "
                   f"completed {len(r.latencies)}/{events}")
    click.echo("targets: clean at least 90% of the ceiling; with 429s every event completed")
