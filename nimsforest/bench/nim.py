"""`nimsforest bench nim`: a nim in front of a local OpenAI-compatible server that
answers after a fixed latency, on one node (a nats-server started for the bench).

The ceiling is what the brain's concurrency allows at that latency: concurrency / latency
events per second (the server, in a process of its own, answers every request it gets
in parallel). The figures:
the nim's rate against that ceiling (target at least 90%), then the same run with one
answer in ten a 429 (Retry-After: 0) and the events that completed (target: all of them).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
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


async def _run(events: int, concurrency: int, latency: float) -> list[tuple[int, Result]]:
    store = Path(tempfile.mkdtemp(prefix="nimsforest-bench-nim-"))
    proc, url = _start_server(store)
    try:
        return [(every, await _nim_run(url, events, concurrency, latency, every))
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
    for every, r in _runner(_run(events, concurrency, latency)):
        label = "with 10% 429:" if every else "clean:       "
        click.echo(f"{label} {r.rate:8.1f} events/s ({r.rate / ceiling:.0%} of the ceiling)   "
                   f"p50 {r.pct(50):7.1f} ms   p99 {r.pct(99):7.1f} ms   "
                   f"completed {len(r.latencies)}/{events}")
    click.echo("targets: clean at least 90% of the ceiling; with 429s every event completed")
