"""`nimsforest bench` runs end to end and reports its figures next to a baseline from the
same run. What the figures are is not asserted (benchmarks measure; tests do not time)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import nats

from nimsforest.bench.dashboard import browser_missing


def _bench(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "nimsforest", "bench", *args],
        capture_output=True, text=True, timeout=150,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_bench_startup_reports_both_starts_and_the_difference() -> None:
    out = _bench("startup", "--rounds", "1")
    kinds = re.findall(r"^(first boot|restart after a graceful stop|restart after kill -9):$", out, re.M)
    assert kinds == ["first boot", "restart after a graceful stop", "restart after kill -9"], out
    assert len(re.findall(r"bare nats-server -js\s+-> /healthz 200: median \d+\.\d+s", out)) == 3
    assert len(re.findall(r"nimsforest standalone -> /health 200:\s+median \d+\.\d+s", out)) == 3
    assert re.search(r"added by NimsForest: -?\d+\.\d+s \(target <= 1\.0s: (met|NOT met)\)", out)
    assert len(re.findall(r"slowest: \d+\.\d+s \(target: none over 2s: (met|NOT met)\)", out)) == 3
    assert re.search(r"supervisor CPU until ready \(user\+system\): median \d+\.\d+s", out)
    assert re.search(r"supervisor RSS when ready: median \d+\.\d+ MB", out)


def test_bench_pipeline_reports_a_ratio_to_raw_nats_py() -> None:
    out = _bench("pipeline", "--events", "200", "--warmup", "20", "--rounds", "1", "--window", "32",
                 "--outputs", "100", "--concurrency", "8")
    assert re.search(r"baseline \(raw nats-py\):\s+\d+ events/s", out)
    assert re.search(r"pipeline \(NimsForest\):\s+\d+ events/s", out)
    assert re.search(r"ratio pipeline/baseline: \d+%", out)
    # the baseline carrying the forest's header lines, and the pipeline against it
    assert re.search(r"the baseline carrying the forest's header lines .*: \d+ events/s, \d+% of the "
                     r"baseline; the pipeline is \d+% of it", out)
    # and without the trace context: what tracing off still costs, the River input's line
    assert re.search(r"tracing off \(no OTLP endpoint\) records nothing; .*\(1 line an event\): .* "
                     r"\(OTEL_PROPAGATORS=none\) ran \d+ events/s, so it costs -?\d+%", out), out
    assert re.search(r"the same \(tracing off\) pipeline run again in each round, its noise here: "
                     r"[+-]\d+% .*; CPU per event the forest's process \d+ us against \d+ us", out), out
    cpu = re.search(r"the forest's process (\d+) us against (\d+) us \([+-]\d+%\), nats-server "
                    r"(\d+) us against (\d+) us", out)
    assert cpu and all(int(x) > 0 for x in cpu.groups()), out  # both processes measured
    assert re.search(r"pipeline, spans exported over OTLP:\s+\d+ events/s", out)
    assert out.startswith("hops per event"), out  # nothing of its child processes' own
    assert re.search(r"ratio traced/untraced pipeline: \d+%", out)
    m = re.search(r"untraced (\d+) us, traced (\d+) us .*exporter process (\d+) us per event", out)
    assert m and all(int(x) > 0 for x in m.groups()), out  # the exporter did export
    assert re.search(r"\(-?\d+ us beyond its start and stop, which take \d+ ms\)", out), out
    spans = re.search(r"spans recorded (\d+), dropped \(the exporter process behind\) (\d+)", out)
    # every hop of the traced run (River input, tree, treehouse, nim, Decomposer), warm-up
    # included
    assert spans and int(spans[1]) == (200 + 20) * 5 and spans[2] == "0", out
    assert re.search(r"raw httpx posts:\s+\d+ events/s\s+p50\s+\d+\.\d ms\s+p99\s+\d+\.\d ms", out)
    assert re.search(r"http output \(forest\):\s+\d+ events/s", out)
    assert re.search(r"ratio output/raw httpx: \d+%", out)


def test_bench_dashboard_reports_its_cost_next_to_the_node_without_it() -> None:
    """On three nodes (a registry and three node processes); the first paint needs the
    browser (`make browser-deps`, which `make test` runs)."""
    if browser_missing():
        out = subprocess.run([sys.executable, "-m", "nimsforest", "bench", "dashboard"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "bench dashboard needs" in out.stderr
        return
    out = _bench("dashboard", "--components", "5", "--nodes", "3", "--rounds", "1",
                 "--seconds", "1")
    assert "3 nodes (a cluster, streams at R3), a forest of 5 components" in out
    assert re.search(r"GET /health \(baseline\):\s+median \d+\.\d+ ms", out)
    assert re.search(r"/ui/events to its first state:\s+median \d+\.\d+ ms", out)
    assert re.search(r"browser, /health loaded \(baseline\): median \d+\.\d+s", out)
    assert re.search(r"browser, /ui showing 5 components on 3 node\(s\): median \d+\.\d+s", out)
    assert re.search(r"node CPU, nothing open \(baseline\):\s+\d+\.\d+% of a core", out)
    assert re.search(r"node CPU, one dashboard open:\s+\d+\.\d+% of a core \([+-]\d+\.\d+%", out)


def test_bench_nim_reports_its_rate_against_the_ceiling_and_completes_every_event() -> None:
    out = _bench("nim", "--events", "40", "--concurrency", "8", "--latency", "0.05")
    assert re.search(r"ceiling \(concurrency / latency\):\s+160\.0 events/s", out)
    assert re.search(r"baseline, bare httpx:\s+\d+\.\d requests/s \(\d+% of the ceiling", out)
    assert re.search(r"clean:\s+\d+\.\d events/s \(\d+% of the ceiling, \d+% of the baseline\)"
                     r".*completed 40/40", out)
    assert re.search(r"with 10% 429:\s+\d+\.\d events/s .*completed 40/40", out)


async def test_the_baseline_carries_the_header_lines_the_forest_stores(nc: nats.NATS) -> None:
    """`bench pipeline`'s baseline with the forest's headers stays faithful: per event, the
    same header names, hop by hop, as a real Forest stores for the demo's event."""
    from nimsforest.bench.pipeline import _HOPS, _contact, _forest_headers
    from nimsforest.forest import Forest, Tracing, load_demo_config

    forest = Forest(nc, load_demo_config().model_copy(update={"sources": {}}), tracing=Tracing())
    await forest.start()
    js = nc.jetstream()
    try:
        await js.publish("river.contacts", _contact(1, "x"))
        stored: list[frozenset[str]] = []
        for _ in range(100):
            stored = []
            for stream in ("WIND", "HUMUS", "KV_SOIL"):
                info = await js.stream_info(stream)
                if not info.state.messages:
                    continue
                for seq in range(info.state.first_seq, info.state.last_seq + 1):
                    stored.append(frozenset((await js.get_msg(stream, seq)).headers or {}))
            if len(stored) == 5:
                break
            await asyncio.sleep(0.05)
    finally:
        await forest.stop()
    carried = [frozenset(_forest_headers(stage, out, "x-1", 1)) for stage, out in _HOPS]
    assert sorted(stored, key=sorted) == sorted(carried, key=sorted)
