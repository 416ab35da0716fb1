"""`nimsforest bench pipeline`: the demo pipeline end to end against raw nats-py.

Per event, both runs make the same JetStream hops:
    6 JetStream publishes  river, contact.created, lead.scored, lead.qualified, humus, soil
    4 pull consumptions    (fetch + ack) by tree, treehouse, nim and decomposer
The pipeline run is the Forest (Lua tree and treehouse, rules nim, decomposer into KV).
The baseline moves the same bytes through four raw nats-py stages (publish_async + pull
fetch/ack), doing no work of its own. Both runs share one nats-server started for the
bench, one connection each, and the same driver: `--window` events in flight, an event
is done when its Soil write (baseline: its last publish) is seen.
"""

from __future__ import annotations

import asyncio
import enum
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import click
import httpx
import nats
import psutil

from natsembed import find_nats_server, free_port
from nimsforest import natsclient
from nimsforest.bench.outputs import Receiver, output_hop, raw_posts
from nimsforest.bench.results import Result
from nimsforest.streams import StreamSpec, ensure_stream

PUBLISHES, CONSUMES = 6, 4
FETCH = (256, 0.01)  # baseline fetch batch and timeout (the best of those tried on this machine)


def _contact(n: int, prefix: str = "b") -> bytes:
    return json.dumps(
        {
            "event": "contact.created",
            "contact": {
                "id": f"{prefix}-{n}",
                "email": f"lead{n}@corp.io",
                "title": ("CTO", "VP Sales", "Engineer")[n % 3],
                "company": {
                    "name": "Corp",
                    "size": (n * 37) % 1000,
                    "industry": ("technology", "retail")[n % 2],
                },
            },
        }
    ).encode()


async def _drive(
    nc: Any, n_events: int, window: int, publish: Callable[[int], Awaitable[Any]], done_subject: str,
    prefix: str = "b",
) -> Result:
    """Publish `n_events` with at most `window` unfinished; time each to its completion
    (a message on `done_subject` whose last token is the event's key, `<prefix>-<n>`)."""
    started: dict[str, float] = {}
    latencies: list[float] = []
    slots = asyncio.Semaphore(window)
    all_done = asyncio.Event()

    async def on_done(msg: Any) -> None:
        t0 = started.pop(msg.subject.rsplit(".", 1)[1], None)
        if t0 is not None:
            latencies.append(time.perf_counter() - t0)
            slots.release()
            if len(latencies) == n_events:
                all_done.set()

    sub = await nc.subscribe(done_subject, cb=on_done)
    acks = []
    t_start = time.perf_counter()
    for i in range(n_events):
        await slots.acquire()
        started[f"{prefix}-{i}"] = time.perf_counter()
        acks.append(await publish(i))
    await asyncio.gather(*acks)
    await asyncio.wait_for(all_done.wait(), timeout=max(60.0, n_events / 50))
    seconds = time.perf_counter() - t_start
    await sub.unsubscribe()
    return Result(n_events, seconds, latencies)


_SINK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector's

    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass

server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
server.serve_forever()
"""


class OtlpSink:
    """A local OTLP/HTTP receiver in a process of its own (so that it does not share the
    pipeline's interpreter), taking every export."""

    def __init__(self) -> None:
        port = free_port()
        self._proc = subprocess.Popen([sys.executable, "-c", _SINK, str(port)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self._proc.stdout is not None
        self._proc.stdout.readline()  # "ready"
        self.url = f"http://127.0.0.1:{port}/v1/traces"

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)


class PipelineRun(NamedTuple):
    result: Result
    cpu: float  # CPU seconds this process spent on the counted events
    server_cpu: float  # CPU seconds nats-server spent on them (0: not measured)
    spans: int  # spans the tracing recorded: handed to its exporter process, or dropped
    dropped: int  # spans it dropped (its exporter process behind or down)


async def _pipeline(url: str, n_events: int, window: int, otlp: str | None = None,
                    prefix: str = "p", warmup: int = 0, carried: bool = True,
                    server: psutil.Process | None = None) -> PipelineRun:
    """The demo pipeline, the CPU seconds this process spent on the counted events and the
    spans dropped; with `otlp`, every hop's span exported to that receiver (the trace
    context on every hop), else tracing off (on the River inputs; with `carried` False on
    none). The River inputs carry what the forest's River stores (a hop of the tracing
    under test: its trace context, `Nimsforest-Hop`). `warmup` events go through
    first, not counted, as the baseline's do. Each run on one server has its own `prefix`:
    its events' Soil keys are new, as the first run's are (a key an earlier run wrote costs
    the Decomposer a failed compare-and-set, a read and a second write, which would make
    the later run look slower for nothing of its own)."""
    from nimsforest.forest import Carry, Forest, Tracing, load_demo_config
    from nimsforest.forest.trace import OtlpTracing, hop_name

    nc = await natsclient.connect(url)  # the node's client, as a node's forest runs on
    cfg = load_demo_config()
    cfg = cfg.model_copy(update={"sources": {}})
    tracing = (OtlpTracing("nimsforest-bench", "bench", otlp, carried) if otlp
               else Tracing(Carry.RIVER if carried else Carry.NOTHING))
    way_in = hop_name("api", "bench")
    await tracing.start()
    if not await tracing.ready(30):  # its start would be counted as the forest's
        raise click.ClickException("the span exporter process did not start within 30s")
    forest = Forest(nc, cfg, tracing=tracing)
    await forest.start()
    js = nc.jetstream()
    try:
        def river(i: int, keys: str) -> Awaitable[Any]:
            hop = tracing.hop("river river.contacts", None, {})
            hop.end()
            return js.publish_async("river.contacts", _contact(i, keys), headers=hop.headers(way_in))

        def drive(n: int, keys: str) -> Awaitable[Result]:
            return _drive(nc, n, window, lambda i: river(i, keys), "$KV.SOIL.>", keys)

        if warmup:
            await drive(warmup, prefix + "w")
        cpu, server_cpu = time.process_time(), _cpu_of(server)
        result = await drive(n_events, prefix)
        cpu, server_cpu = time.process_time() - cpu, _cpu_of(server) - server_cpu
    finally:
        await forest.stop()
        await nc.close()
        await tracing.stop()
    st = tracing.status()
    return PipelineRun(result, cpu, server_cpu, st.spans + st.dropped, st.dropped)


def _cpu_of(process: psutil.Process | None) -> float:
    """The CPU seconds `process` has spent so far (0 when none is given)."""
    if process is None:
        return 0.0
    t = process.cpu_times()
    return float(t.user + t.system)


_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-{:016x}-01"


class Carried(enum.Enum):
    """What a raw baseline's publishes carry."""

    IDS = "ids"  # the event's id alone
    FOREST = "forest"  # the header lines the forest's publish on that hop carries


def _forest_headers(stage: int, output: int, key: str, seq: int) -> dict[str, str]:
    """The header lines the forest's output `output` of hop `stage` carries with tracing off
    (the hop and its input, a message id; the nim's brain; the Soil write's revision and
    message id, which names the Humus sequence), with the event's key in the message id."""
    if stage == 3:
        return {"Nats-Expected-Last-Subject-Sequence": "0", "Nats-Msg-Id": f"soil:{seq}:{key}"}
    headers = {"Nimsforest-Brain": "rules"} if (stage, output) == (2, 0) else {}
    headers.update({"Nimsforest-Hop": f"stage:{stage}@n1 B:{seq}",
                    "Nats-Msg-Id": f"stage-{stage}-{output}:{seq}:{key}"})
    return headers


def _river_headers(carried: Carried, key: str, seq: int) -> dict[str, str]:
    """What a baseline's River input carries: the event's id, and with FOREST what the
    forest's River stores besides (its trace context and `Nimsforest-Hop`)."""
    if carried is Carried.IDS:
        return {"id": key}
    return {"id": key, "traceparent": _TRACE.format(seq), "Nimsforest-Hop": "api@n1"}


# the baseline's hops (stage, output): tree, treehouse, nim (leaf and Humus entry), Decomposer
_HOPS = ((0, 0), (1, 0), (2, 0), (2, 1), (3, 0))


def _key(headers: dict[str, str] | None) -> str:
    """The event's key: its `id` header (the driver's), else the last token of the message id."""
    h = headers or {}
    return h.get("id") or h.get("Nats-Msg-Id", "").rpartition(":")[2]


async def _baseline(url: str, n_events: int, window: int, carried: Carried = Carried.IDS,
                    prefix: str = "b") -> Result:
    """Four raw stages with the pipeline's hop shape; they forward bytes unchanged. With
    `carried` FOREST, each publish carries the header lines the forest's does on that hop
    instead of the event's id alone (what nats-py's header handling costs the forest,
    measured apart from the forest's own work)."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    for name, subj in (
        ("BRIVER", "b.river.>"),
        ("BWIND", "b.wind.>"),
        ("BHUMUS", "b.humus.>"),
        ("BSOIL", "b.soil.>"),
    ):
        await ensure_stream(js, StreamSpec(name=name, subjects=(subj,)), 1, None)
    stages = [  # (stream, filter, outputs)
        ("BRIVER", "b.river.contacts", ["b.wind.contact.created"]),
        ("BWIND", "b.wind.contact.created", ["b.wind.lead.scored"]),
        ("BWIND", "b.wind.lead.scored", ["b.wind.lead.qualified", "b.humus.q.update"]),
        ("BHUMUS", "b.humus.>", ["b.soil.{id}"]),
    ]
    stop = asyncio.Event()

    async def stage(i: int, stream: str, filt: str, outputs: list[str]) -> None:
        psub = await js.pull_subscribe(filt, durable=f"stage{i}", stream=stream)
        while not stop.is_set():
            try:
                msgs = await psub.fetch(*FETCH)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            futures = []
            for m in msgs:
                key = _key(m.headers)
                for o, out in enumerate(outputs):
                    headers = (m.headers if carried is Carried.IDS else _forest_headers(
                        i, o, key, m.metadata.sequence.stream))
                    futures.append(
                        await js.publish_async(out.replace("{id}", key), m.data, headers=headers)
                    )
            await asyncio.gather(*futures)
            for m in msgs:
                await m.ack()

    tasks = [asyncio.create_task(stage(i, *st)) for i, st in enumerate(stages)]
    try:
        # the event's key travels in a header so the last stage can name its soil subject
        return await _drive(
            nc,
            n_events,
            window,
            lambda i: js.publish_async("b.river.contacts", _contact(i),
                                       headers=_river_headers(carried, f"{prefix}-{i}", i)),
            "b.soil.>",
            prefix,
        )
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await nc.close()


def _start_server(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    port, monitor = free_port(), free_port()
    proc = subprocess.Popen(
        [
            str(find_nats_server()),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-m",
            str(monitor),
            "-sd",
            str(store),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if (
                httpx.get(
                    f"http://127.0.0.1:{monitor}/healthz", timeout=1, trust_env=False
                ).status_code
                == 200
            ):
                return proc, f"nats://127.0.0.1:{port}"
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise click.ClickException("nats-server did not become healthy for the benchmark.")


class Kind(enum.Enum):
    """The pipeline runs of a round."""

    DEFAULT = "default"  # tracing off: River inputs carry the trace context
    AGAIN = "again"  # the same once more: how far two runs of one pipeline differ here
    UNCARRIED = "uncarried"  # OTEL_PROPAGATORS=none: hops carry none
    TRACED = "traced"  # spans exported to a local OTLP receiver


@dataclass
class Runs:
    bases: list[Result] = field(default_factory=list)
    carried: list[Result] = field(default_factory=list)  # the baseline with the forest's headers
    # each kind's pipeline runs, one a round
    pipelines: dict[Kind, list[PipelineRun]] = field(
        default_factory=lambda: {kind: [] for kind in Kind})
    posts: list[Result] = field(default_factory=list)  # the output hop's baseline: raw httpx
    outs: list[Result] = field(default_factory=list)  # the output hop
    # CPU seconds per event of the span exporter process (a child, counted once it has
    # ended), and of its start and stop alone
    exporter_cpu: list[float] = field(default_factory=list)
    exporter_idle: list[float] = field(default_factory=list)

    def results(self, kind: Kind) -> list[Result]:
        return [run.result for run in self.pipelines[kind]]

    def cpu_us(self, kind: Kind, events: int) -> float:
        """The median CPU an event of this process in that kind's runs, in microseconds."""
        return statistics.median(run.cpu for run in self.pipelines[kind]) / events * 1e6

    def server_cpu_us(self, kind: Kind, events: int) -> float:
        """The same for nats-server."""
        return statistics.median(run.server_cpu for run in self.pipelines[kind]) / events * 1e6


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _exporter_idle(sink: OtlpSink) -> float:
    """CPU seconds of the span exporter process started and stopped with no span: its
    imports and set-up, which each traced run's exporter figure includes once."""
    before = _children_cpu()
    subprocess.run([sys.executable, "-m", "nimsforest.spanexport", "nimsforest-bench", "bench",
                    sink.url], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=False)
    return _children_cpu() - before


async def _pipeline_run(kind: Kind, runs: Runs, url: str, events: int, window: int,
                        warmup: int, server: psutil.Process) -> None:
    if kind is not Kind.TRACED:
        runs.pipelines[kind].append(await _pipeline(
            url, events, window, prefix={Kind.DEFAULT: "p", Kind.AGAIN: "a", Kind.UNCARRIED: "n"}[kind],
            warmup=warmup, carried=kind is not Kind.UNCARRIED, server=server))
        return
    sink = OtlpSink()
    try:
        runs.exporter_idle.append(_exporter_idle(sink))
        children = _children_cpu()
        runs.pipelines[kind].append(await _pipeline(url, events, window, sink.url, "t", warmup))
        # the exporter exported the warm-up's spans too
        runs.exporter_cpu.append((_children_cpu() - children) / (events + warmup))
    finally:
        sink.stop()


async def _run(events: int, window: int, warmup: int, rounds: int, outputs: int,
               concurrency: int, traced: bool = True) -> Runs:
    """`rounds` times, on a fresh nats-server each: a baseline run, then a pipeline run;
    then (with `outputs`) raw httpx posts, then the output hop, to one local receiver."""
    runs = Runs()
    for _ in range(rounds):
        store = Path(tempfile.mkdtemp(prefix="nimsforest-bench-"))
        proc, url = _start_server(store)
        receiver = await Receiver().start()
        try:
            if warmup:
                await _baseline(url, warmup, window)
            runs.bases.append(await _baseline(url, events, window))
            runs.carried.append(await _baseline(url, events, window, Carried.FOREST, "c"))
            # the default, the one without a trace context, the default again and the
            # traced one, each first, second ... in turn (later runs meet a fuller store)
            kinds = (Kind.DEFAULT, Kind.UNCARRIED, Kind.AGAIN, *((Kind.TRACED,) if traced else ()))
            turn = len(runs.pipelines[Kind.DEFAULT]) % len(kinds)
            for kind in kinds[turn:] + kinds[:turn]:
                await _pipeline_run(kind, runs, url, events, window, warmup,
                                    psutil.Process(proc.pid))
            if outputs:
                if warmup:
                    await raw_posts(receiver, warmup, window, concurrency)
                runs.posts.append(await raw_posts(receiver, outputs, window, concurrency))
                runs.outs.append(await output_hop(url, receiver, outputs, window, concurrency))
        finally:
            await receiver.stop()
            proc.terminate()
            proc.wait(10)
            shutil.rmtree(store, ignore_errors=True)
    return runs


def _merge(results: list[Result]) -> Result:
    """Median rate; latencies of every round together."""
    mid = sorted(results, key=lambda r: r.rate)[len(results) // 2]
    return Result(mid.events, mid.seconds, [x for r in results for x in r.latencies])


def _runner(coro: Awaitable[Any]) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


@click.command("pipeline")
@click.option("--events", default=3000, show_default=True, help="Events per run.")
@click.option("--window", default=256, show_default=True, help="Events in flight at once.")
@click.option(
    "--warmup", default=300, show_default=True,
    help="Events run first and not counted, by the baseline and by each pipeline run."
)
@click.option(
    "--rounds",
    default=3,
    show_default=True,
    help="Rounds (fresh nats-server each); medians are shown.",
)
@click.option("--outputs", default=2000, show_default=True,
              help="Leaves for the output hop (0: skip it).")
@click.option("--concurrency", default=32, show_default=True,
              help="Requests in flight for the output hop (the output's and raw httpx's).")
@click.option("--traced/--no-traced", default=True, show_default=True,
              help="Also run the pipeline exporting every span over OTLP to a local receiver.")
def command(events: int, window: int, warmup: int, rounds: int, outputs: int,
            concurrency: int, traced: bool) -> None:
    """River -> Tree -> TreeHouse -> Nim (rules) -> Humus -> Soil on one node, next to a
    raw nats-py baseline with the same JetStream hops, from the same run. Then the output
    hop: an http output delivering leaves to a local receiver, next to raw httpx posting
    the same bodies with the same concurrency."""
    runs = _runner(_run(events, window, warmup, rounds, outputs, concurrency, traced))
    bases, pipes = runs.bases, runs.results(Kind.DEFAULT)
    uncarried, again, traced_runs = (runs.results(Kind.UNCARRIED), runs.results(Kind.AGAIN),
                                     runs.results(Kind.TRACED))
    base, pipe = _merge(bases), _merge(pipes)
    click.echo(
        f"hops per event: {PUBLISHES} JetStream publishes + {CONSUMES} pull fetch/ack consumptions"
    )
    click.echo(
        f"events: {events} per run, in flight: {window}, rounds: {rounds} "
        "(median rate; p50/p99 over all rounds)"
    )
    for i, (b, p) in enumerate(zip(bases, pipes, strict=True), 1):
        ratio = p.rate / b.rate
        traced_round = ""
        if traced_runs:
            t = traced_runs[i - 1]
            traced_round = f", traced {t.rate:6.0f}/s ({t.rate / p.rate:.0%} of untraced)"
        c = runs.carried[i - 1]
        n = uncarried[i - 1]
        click.echo(f"  round {i}: baseline {b.rate:6.0f}/s (with the forest's headers {c.rate:6.0f}/s), "
                   f"pipeline {p.rate:6.0f}/s ({ratio:.0%}; without trace context {n.rate:6.0f}/s)"
                   + traced_round)
    for label, r in (("baseline (raw nats-py):", base), ("pipeline (NimsForest): ", pipe)):
        click.echo(
            f"{label} {r.rate:8.0f} events/s   p50 {r.pct(50):7.1f} ms   p99 {r.pct(99):7.1f} ms"
        )
    # each round's pipeline against its own baseline (the same load), the median of those
    ratios = [p.rate / b.rate for b, p in zip(bases, pipes, strict=True)]
    click.echo(f"ratio pipeline/baseline: {statistics.median(ratios):.0%}, the median of the "
               "rounds' (target at least 70%)")
    carried = [c.rate / b.rate for b, c in zip(bases, runs.carried, strict=True)]
    apart = [p.rate / c.rate for c, p in zip(runs.carried, pipes, strict=True)]
    river_lines = len(_river_headers(Carried.FOREST, "k", 1)) - 1
    forest_lines = sum(len(_forest_headers(st, o, "k", 1)) for st, o in _HOPS) + river_lines
    click.echo(f"the baseline carrying the forest's header lines ({forest_lines + 1} an event: "
               f"the forest's {forest_lines} and the event's id; the baseline's 6 are ids): "
               f"{_merge(runs.carried).rate:.0f} events/s, {statistics.median(carried):.0%} of the "
               f"baseline; the pipeline is {statistics.median(apart):.0%} of it (medians of the "
               "rounds')")
    # tracing off still carries a traceparent on the River inputs: its price
    lines = sum(1 for st, o in _HOPS if "traceparent" in _forest_headers(st, o, "k", 1)) + 1
    trace_cost = [1 - p.rate / n.rate for n, p in zip(uncarried, pipes, strict=True)]
    click.echo(f"tracing off (no OTLP endpoint) records nothing; what it carries is the trace "
               f"context of the River inputs ({lines} line an event): the pipeline whose "
               f"messages carry none (OTEL_PROPAGATORS=none) ran {_merge(uncarried).rate:.0f} "
               f"events/s, so it costs {statistics.median(trace_cost):.0%} (the median of the "
               f"rounds'; rounds {', '.join(f'{x:+.0%}' for x in trace_cost)})")
    us = {"forest": runs.cpu_us(Kind.DEFAULT, events),
          "forest none": runs.cpu_us(Kind.UNCARRIED, events),
          "server": runs.server_cpu_us(Kind.DEFAULT, events),
          "server none": runs.server_cpu_us(Kind.UNCARRIED, events)}
    click.echo(f"CPU per event with the trace context and without it (medians): the forest's "
               f"process {us['forest']:.0f} us against {us['forest none']:.0f} us "
               f"({us['forest'] / us['forest none'] - 1:+.0%}), nats-server {us['server']:.0f} us "
               f"against {us['server none']:.0f} us ({us['server'] / us['server none'] - 1:+.0%})")
    # the noise: the same pipeline twice in a round, measured as the two above are
    same = [1 - a.rate / p.rate for p, a in zip(pipes, again, strict=True)]
    twice = {"forest": runs.cpu_us(Kind.AGAIN, events),
             "server": runs.server_cpu_us(Kind.AGAIN, events)}
    click.echo(f"the same (tracing off) pipeline run again in each round, its noise here: "
               f"{statistics.median(same):+.0%} (the median of the rounds'; rounds "
               f"{', '.join(f'{x:+.0%}' for x in same)}); CPU per event the forest's process "
               f"{twice['forest']:.0f} us against {us['forest']:.0f} us "
               f"({twice['forest'] / us['forest'] - 1:+.0%}), nats-server {twice['server']:.0f} us "
               f"against {us['server']:.0f} us ({twice['server'] / us['server'] - 1:+.0%})")
    if traced_runs:
        tr = _merge(traced_runs)
        click.echo(f"pipeline, spans exported over OTLP: {tr.rate:8.0f} events/s   p50 "
                   f"{tr.pct(50):7.1f} ms   p99 {tr.pct(99):7.1f} ms")
        traced_ratios = [t.rate / p.rate for p, t in zip(pipes, traced_runs, strict=True)]
        click.echo(f"ratio traced/untraced pipeline: {statistics.median(traced_ratios):.0%}, the "
                   "median of the rounds' (target at least 85%)")
        cpu_pipe, cpu_traced = us["forest"], runs.cpu_us(Kind.TRACED, events)
        exporter, idle = statistics.median(runs.exporter_cpu), statistics.median(runs.exporter_idle)
        click.echo(f"CPU per event of the forest's process (medians): untraced "
                   f"{cpu_pipe:.0f} us, traced {cpu_traced:.0f} us "
                   f"({cpu_traced / cpu_pipe - 1:+.0%}); the span exporter process "
                   f"{exporter * 1e6:.0f} us per event, on another core when one is free "
                   f"({(exporter - idle / (events + warmup)) * 1e6:.0f} us beyond its start and stop, "
                   f"which take {idle * 1e3:.0f} ms)")
        spans = runs.pipelines[Kind.TRACED]
        click.echo(f"spans recorded {sum(r.spans for r in spans)}, dropped (the exporter "
                   f"process behind) {sum(r.dropped for r in spans)}")
    if not runs.outs:
        return
    post, out = _merge(runs.posts), _merge(runs.outs)
    click.echo(f"output hop: {outputs} leaves per run, {concurrency} requests in flight, to a "
               "local HTTP receiver")
    for label, r in (("raw httpx posts:       ", post), ("http output (forest):  ", out)):
        click.echo(
            f"{label} {r.rate:8.0f} events/s   p50 {r.pct(50):7.1f} ms   p99 {r.pct(99):7.1f} ms"
        )
    click.echo(f"ratio output/raw httpx: {out.rate / post.rate:.0%} (target at least 70%)")
