"""`nimsforest bench cluster`: peer join latency and failover, next to bare nats-server.

All in one run on this machine (nodes on 127.0.0.1-3, a real registry):

join     NimsForest: a node's start -> the first node sees the cluster at the new size and
         every owned stream at the new replication factor, all replicas current. Measured
         for 1->2 (target: within 3 s) and 2->3.
         Bare: a third nats-server started beside a two-server cluster -> the meta group
         has 3 members and a script has scaled the stream to R3 with every replica current.
         (Bare nats-server cannot run a lone clustered JetStream server, so there is no
         bare 1->2 step.)
failover kill -9 of the node leading RIVER while a client on a survivor publishes ->
         the first acknowledged publish after the kill (target: bare + 1 s), then every
         acknowledged message is read back (target: none lost).
write gap  what an HTTP client of the River sees (POST /api/v1/river with an
         Idempotency-Key, sent to the nodes a load balancer polling /health every 0.5 s
         would use, sent again to the next node until stored): the longest time between
         two stored inputs and the failed requests (anything but 202 and a drained node's
         documented 503; counted by cause: connection refused, reset or closed, timeout,
         503 by its sentence, other status), during a drain-based stop (SIGTERM) of RIVER's leader, a rolling
         restart of all three nodes, and a kill -9 of RIVER's leader, in the same run
         (targets: 0 failed and a gap <= 1 s for the planned two).
River->Soil  the demo forest (n1 runs it; River -> Tree -> TreeHouse -> Nim (rules) ->
         Humus -> Soil): a paced HTTP writer sends contacts (20 a second, each with an
         Idempotency-Key); an input's latency is the time its Soil entry was stored minus
         the time its River message was stored (both JetStream timestamps, one machine's
         clock). Max and p99 with no fault, through a kill -9 of RIVER's leader and through
         a SIGSTOP of a node's nats-server for 8 s, in the same run (target: max <= 10 s
         through any single fault), and how many acknowledged inputs never reached Soil.
         For each fault: what the faulty node's nats-server led, the stream and consumer
         leaders elected meanwhile (JetStream's LEADER_ELECTED advisories) and the slowest
         inputs hop by hop (each hop's store time and node, from their stored headers).
         `--soil-only` runs this part alone, `--rounds` times each fault.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import enum
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx
import nats
from nats.aio.client import Client as NatsClient
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from natsembed import (
    ClusterConfig,
    JetStreamConfig,
    ServerConfig,
    find_nats_server,
    free_port,
    load_or_create,
    node_of,
    render_config,
)
from nimsforest.deploy.rolling import Target, rolling_restart
from nimsforest.durations import parse_duration
from nimsforest.streams import HUMUS, RIVER, SOIL, WIND

SECRET = "bench-secret"
# Default settings, except a 1 s registry heartbeat: joins do not depend on it, but the
# failover rounds restart the killed node, which must re-register quickly.
_ENV = {**os.environ, "REGISTRY_HEARTBEAT_INTERVAL": "1s"}
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
T = TypeVar("T")


# --- processes ---------------------------------------------------------------------------
@dataclasses.dataclass
class Proc:
    name: str
    host: str
    client_port: int
    monitor_port: int
    popen: subprocess.Popen[bytes]
    url: str  # client URL with credentials
    api: str | None = None

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM if self.api else signal.SIGINT)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


async def _ignore(exc: Exception) -> None:
    """The bench's connections meet killed and starting servers on purpose; what fails is
    retried or reported by the step, not logged as a traceback by nats-py."""


async def _connect(url: str, **options: Any) -> NatsClient:
    return await nats.connect(url, error_cb=_ignore, **options)


def start_registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "nimsforest", "registry", "serve", "--host", "127.0.0.1",
                          "--port", str(port), "--data", str(root / "registry")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    _wait(lambda: _get(url + "/v1/health") is not None, 30, "registry")
    return p, url


def start_node(root: Path, name: str, host: str, registry: str, forest: Path | None = None) -> Proc:
    ports = [free_port(host) for _ in range(4)]
    data = root / name
    args = [sys.executable, "-m", "nimsforest", "run", "--node-name", name, "--data-dir", str(data),
            "--client-port", str(ports[0]), "--cluster-port", str(ports[1]), "--monitor-port", str(ports[2]),
            "--api", f"{host}:{ports[3]}", "--bind", host, "--registry-url", registry,
            "--cluster-secret", SECRET, "--log-level", "warning",
            *(["--forest-config", str(forest)] if forest else [])]
    popen = subprocess.Popen(args, env=_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Proc(name, host, ports[0], ports[2], popen, "", api=f"http://{host}:{ports[3]}")


def node_url(root: Path, proc: Proc) -> str:
    c = load_or_create(root / proc.name).with_cluster_secret(SECRET)
    return f"nats://{c.app_user}:{c.app_password}@{proc.host}:{proc.client_port}"


def start_bare(root: Path, binary: Path, names: list[str], cluster_ports: dict[str, int]) -> list[Proc]:
    """Bare nats-servers in one cluster, every route configured (no supervisor, no witness)."""
    procs = []
    for name in names:
        host = HOSTS[int(name[-1]) - 1]
        creds = load_or_create(root / f"bare-{name}").with_cluster_secret(SECRET)
        client, monitor = free_port(host), free_port(host)
        routes = tuple(f"{HOSTS[int(n[-1]) - 1]}:{p}" for n, p in cluster_ports.items() if n != name)
        cfg = ServerConfig(
            server_name=name, client_listen=f"{host}:{client}", monitor_listen=f"{host}:{monitor}",
            jetstream=JetStreamConfig(store_dir=root / f"bare-{name}" / "store"),
            cluster=ClusterConfig(name="bare", listen=f"{host}:{cluster_ports[name]}",
                                  advertise=f"{host}:{cluster_ports[name]}", routes=routes),
            credentials=creds,
        )
        conf = root / f"bare-{name}.conf"
        conf.write_text(render_config(cfg))
        popen = subprocess.Popen([str(binary), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        procs.append(Proc(name, host, client, monitor, popen,
                          f"nats://{creds.app_user}:{creds.app_password}@{host}:{client}"))
    return procs


# --- polling -------------------------------------------------------------------------------
def _get(url: str) -> dict | None:
    try:
        r = httpx.get(url, timeout=2, trust_env=False)
        return r.json() if r.status_code in (200, 503) else None
    except (httpx.HTTPError, ValueError):
        return None


def _wait(check: Callable[[], object], timeout: float, what: str, pause: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(pause)
    raise click.ClickException(f"timed out waiting for {what}")


def cluster_size_is(api: str, size: int) -> bool:
    """The node sees `size` members (routed, in the meta group)."""
    doc = _get(api + "/health/cluster")
    return doc is not None and doc.get("size") == size


def cluster_ready(api: str, size: int) -> bool:
    doc = _get(api + "/health/cluster")
    if not doc or doc.get("size") != size:
        return False
    rf = min(size, 3)
    streams = doc.get("streams", [])
    return bool(streams) and all(s["replicas"] == rf and s["current"] for s in streams)


async def bare_scaled(url: str, monitor: str, size: int) -> bool:
    jsz = _get(monitor + "/jsz")
    meta = (jsz or {}).get("meta_cluster") or {}
    if meta.get("cluster_size", 0) < size or len(meta.get("replicas") or []) + 1 < size:
        return False
    nc = await _connect(url, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=2)
        info = await js.stream_info("RIVER")
        if info.config.num_replicas != size:
            await js.update_stream(dataclasses.replace(info.config, num_replicas=size))
            return False
        reps = (info.cluster.replicas or []) if info.cluster else []
        return len(reps) == size - 1 and all(r.current for r in reps)
    except Exception:  # noqa: BLE001 - not ready yet
        return False
    finally:
        await nc.close()


# --- failover ------------------------------------------------------------------------------
async def _leader(nc: NatsClient) -> str | None:
    """RIVER's leader's server name, as JetStream says through `nc` (None: none yet)."""
    info = await nc.jetstream(timeout=5).stream_info("RIVER")
    return info.cluster.leader if info.cluster and info.cluster.leader else None


async def _lead_river(nc: NatsClient, server: str) -> None:
    """Make `server` RIVER's leader (a step-down to it as the preferred successor)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if await _leader(nc) == server:
                return
            await nc.request("$JS.API.STREAM.LEADER.STEPDOWN.RIVER",
                             json.dumps({"placement": {"preferred": server}}).encode(), timeout=5)
        except Exception:  # noqa: BLE001 - a leader being elected: ask again
            pass
        await asyncio.sleep(0.5)
    raise click.ClickException(f"{server} did not become RIVER's leader within 30s")


async def failover(writer_url: str, victim: Proc, reader_url: str, subject: str) -> tuple[float, int, int]:
    """Publish from a survivor, kill -9 the victim; (seconds to the next ack, acked, lost).
    The victim is made RIVER's leader first, as JetStream itself says (a leader read from a
    node's /health/cluster a moment earlier may have moved since: the kill then measured 0 s)."""
    nc = await _connect(writer_url)
    js = nc.jetstream()
    await _lead_river(nc, victim.name)
    acked: list[int] = []
    killed_at = 0.0
    first_after = 0.0
    i = 0
    while True:
        if len(acked) == 200 and not killed_at:
            victim.kill()
            killed_at = time.monotonic()
        try:
            await js.publish(subject, str(i).encode(), timeout=0.5)
            acked.append(i)
            if killed_at and not first_after:
                first_after = time.monotonic()
        except Exception:  # noqa: BLE001 - the stream is electing a leader
            await asyncio.sleep(0.01)
        i += 1
        if first_after and len(acked) >= 400:
            break
        if killed_at and time.monotonic() - killed_at > 60:
            raise click.ClickException("no publish succeeded within 60s of the kill")
    await nc.close()
    got = await read_all(reader_url, subject)
    return first_after - killed_at, len(acked), len([a for a in acked if a not in got])


async def read_all(url: str, subject: str, timeout: float = 60.0) -> set[int]:
    """Every payload on `subject`, retried while JetStream elects leaders after a kill (no
    acks: an acking consumer stops at its 1000 pending messages)."""
    deadline = time.monotonic() + timeout
    while True:
        got: set[int] = set()
        try:
            rc = await _connect(url)
            try:
                sub = await rc.jetstream(timeout=5).pull_subscribe(
                    subject, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL,
                                                   ack_policy=AckPolicy.NONE))
                while True:
                    try:
                        msgs = await sub.fetch(1000, timeout=2)
                    except (TimeoutError, nats.errors.TimeoutError):
                        return got
                    got.update(int(m.data) for m in msgs)
            finally:
                await rc.close()
        except Exception:  # noqa: BLE001 - a consumer cannot be made yet; try again
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def river_leader(urls: list[str]) -> str:
    """RIVER's leader (as a node name) as JetStream says, asked through the first of `urls`
    that answers (a node's /health/cluster may be a moment old, and a kill of a node that
    no longer leads measures nothing)."""
    async def ask(url: str) -> str | None:
        nc = await _connect(url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            leader = await _leader(nc)
            return node_of(leader) if leader else None
        finally:
            await nc.close()

    found: list[str] = []

    def known() -> bool:
        for url in urls:
            try:
                leader = asyncio.run(ask(url))
            except Exception:  # noqa: BLE001 - a node restarting, a leader being elected
                continue
            if leader:
                found[:] = [leader]
                return True
        return False

    _wait(known, 60, "a RIVER leader", pause=0.1)
    return found[0]


# --- the write gap seen by an HTTP client -------------------------------------------------
class Failure(enum.Enum):
    """Why one write of the write gap failed (the client then sent it to the next node)."""

    REFUSED = "connection refused"
    CONNECT = "could not connect"  # a connect error other than a refusal
    RESET = "connection reset"  # the connection broke while the request was sent or read
    CLOSED = "closed without an answer"  # the server closed the connection before answering
    TIMEOUT = "timeout"
    UNAVAILABLE = "503"  # with the answer's sentence
    STATUS = "status"  # any other status but 202 (the status is the detail)
    OTHER = "other error"


@dataclasses.dataclass(frozen=True)
class FailedWrite:
    kind: Failure
    detail: str = ""  # a 503's sentence (up to its first ';', no "(held 1.2s)"), or the status

    def label(self) -> str:
        return f"{self.kind.value} {self.detail}".strip() if self.detail else self.kind.value


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    at: BaseException | None = exc
    while at is not None and id(at) not in seen:
        if isinstance(at, kind):
            return True
        seen.add(id(at))
        at = at.__cause__ or at.__context__
    return False


def failed_request(exc: httpx.HTTPError) -> FailedWrite:
    """A request that got no answer, by the exception's type (pure)."""
    if isinstance(exc, httpx.TimeoutException):
        return FailedWrite(Failure.TIMEOUT)
    if isinstance(exc, httpx.ConnectError):
        refused = _caused_by(exc, ConnectionRefusedError)
        return FailedWrite(Failure.REFUSED if refused else Failure.CONNECT)
    if isinstance(exc, httpx.RemoteProtocolError):
        return FailedWrite(Failure.CLOSED)
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.CloseError)):
        return FailedWrite(Failure.RESET)
    return FailedWrite(Failure.OTHER, type(exc).__name__)


_HELD = re.compile(r"\s*\(held [0-9.]+s\)")


def failed_answer(status: int, body: bytes) -> FailedWrite:
    """An answer that is not 202 (nor a drained node's 503), by its status; a 503 with its
    sentence, shortened to group alike answers (pure)."""
    if status != 503:
        return FailedWrite(Failure.STATUS, str(status))
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    sentence = str(doc.get("error") or doc.get("detail") or "") if isinstance(doc, dict) else ""
    return FailedWrite(Failure.UNAVAILABLE, _HELD.sub("", sentence).split(";")[0].strip())


def failures_line(failures: tuple[FailedWrite, ...] | list[FailedWrite]) -> str:
    """`26 failed (20 x 503 The River is not available, 6 x connection refused)`, the most
    frequent first (pure)."""
    if not failures:
        return "0 failed"
    counts = collections.Counter(f.label() for f in failures)
    return f"{len(failures)} failed (" + ", ".join(
        f"{n} x {label}" for label, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) + ")"


@dataclasses.dataclass
class Gap:
    longest: float  # seconds between two stored inputs around the operation
    failures: tuple[FailedWrite, ...]
    acked: int
    lost: int

    @property
    def failed(self) -> int:
        return len(self.failures)


async def write_gap(nodes: list[Proc], action: Callable[[], Any], reader: Callable[[], str],
                    tag: str) -> Gap:
    """Write through the nodes' River API while `action` runs (in a thread)."""
    ready = {n.name for n in nodes}
    stop = asyncio.Event()
    stored: list[float] = []
    acked: list[int] = []
    failed: list[FailedWrite] = []

    async def balance() -> None:
        async with httpx.AsyncClient(timeout=1, trust_env=False) as http:
            while not stop.is_set():
                for n in list(nodes):
                    try:
                        ok = (await http.get(f"{n.api}/health")).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    (ready.add if ok else ready.discard)(n.name)
                await asyncio.sleep(0.5)

    async def write() -> None:
        i = 0
        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            while not stop.is_set():
                turn = i
                while not stop.is_set():
                    pool = [n for n in nodes if n.name in ready] or list(nodes)
                    node = pool[turn % len(pool)]
                    turn += 1
                    try:
                        r = await http.post(f"{node.api}/api/v1/river/{tag}", content=str(i),
                                            headers={"Idempotency-Key": f"{tag}-{i}",
                                                     "Content-Type": "application/json"})
                    except httpx.HTTPError as exc:
                        failed.append(failed_request(exc))
                        await asyncio.sleep(0.02)
                        continue
                    if r.status_code == 202:
                        stored.append(time.monotonic())
                        acked.append(i)
                        break
                    if r.status_code != 503 or "nimsforest-draining" not in r.headers:
                        failed.append(failed_answer(r.status_code, r.content))
                        await asyncio.sleep(0.02)
                i += 1

    tasks = [asyncio.create_task(balance()), asyncio.create_task(write())]
    while len(acked) < 100:
        await asyncio.sleep(0.05)
    began = time.monotonic()
    await asyncio.to_thread(action)
    ended = time.monotonic()
    while len([t for t in stored if t > ended]) < 100 and time.monotonic() - ended < 60:
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks)
    around = [t for t in stored if t >= began - 1]
    longest = max((b - a for a, b in zip(around, around[1:], strict=False)), default=0.0)
    got = await read_all(reader(), f"river.{tag}")
    return Gap(longest, tuple(failed), len(acked), len([a for a in acked if a not in got]))


def restart_node(nodes: list[Proc], name: str, *, kill: bool) -> None:
    """Stop `name` (SIGTERM: a drain first; or kill -9) and start it again, same data."""
    i = next(i for i, n in enumerate(nodes) if n.name == name)
    victim = nodes[i]
    victim.kill() if kill else victim.stop()
    nodes[i] = dataclasses.replace(victim, popen=subprocess.Popen(
        list(victim.popen.args), env=_ENV, stdout=subprocess.DEVNULL,  # type: ignore[arg-type]
        stderr=subprocess.DEVNULL))


def write_gaps(root: Path, nodes: list[Proc]) -> dict[str, Gap]:
    def whole() -> None:
        _wait(lambda: all(cluster_ready(n.api, 3) for n in nodes), 120, "cluster whole again",  # type: ignore[arg-type]
              pause=0.1)

    def reader() -> str:
        return node_url(root, nodes[0])

    def stop_leader(kill: bool) -> Callable[[], None]:
        return lambda: restart_node(nodes, river_leader([node_url(root, n) for n in nodes]), kill=kill)

    def rolling() -> None:
        async def restart(target: Target) -> None:
            await asyncio.to_thread(restart_node, nodes, target.name, kill=False)

        result = asyncio.run(rolling_restart([Target(n.name, n.api or "") for n in nodes], restart))
        if not result.ok:
            raise click.ClickException(f"the rolling restart stopped: {result.sentence}")

    gaps: dict[str, Gap] = {}
    for key, action in (("drain", stop_leader(False)), ("rolling", rolling),
                        ("kill", stop_leader(True))):
        whole()
        gaps[key] = asyncio.run(write_gap(nodes, action, reader, f"gap{key}"))
    return gaps


# --- River -> Soil through faults ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Latency:
    """River -> Soil of the acknowledged inputs of one phase."""

    max: float
    p99: float
    acked: int
    missing: int  # acknowledged, never in Soil
    measured: int  # acknowledged inputs with both store times (the figures are theirs)


def latency_figures(river: dict[str, float], soil: dict[str, float], acked: list[str]) -> Latency:
    """From each key's River and Soil store times (seconds), the figures of `acked` (pure)."""
    lat = sorted(soil[k] - river[k] for k in acked if k in soil and k in river)
    missing = len([k for k in acked if k not in soil])
    if not lat:
        return Latency(0.0, 0.0, len(acked), missing, 0)
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))]
    return Latency(max(lat), p99, len(acked), missing, len(lat))


@dataclasses.dataclass(frozen=True)
class HopTime:
    """One hop of an input on its way to Soil: where its output was stored, by whom, and
    how long after the previous store (the River input's own hop: 0)."""

    stream: str  # RIVER, WIND, HUMUS, KV_SOIL
    by: str  # `api@n2`, `tree:contacts@n1`, ...; "decomposer" for the Soil write
    after: float


@dataclasses.dataclass(frozen=True)
class SlowInput:
    key: str
    at: float  # the River input's store time (epoch seconds)
    total: float  # River -> Soil
    hops: tuple[HopTime, ...]  # River first, Soil last

    def line(self, began: float) -> str:
        """One line: the total, when the input was stored relative to `began` (the fault's
        start, epoch seconds) and each hop's store, by whom, and how long after the last."""
        return f"{self.total:6.2f}s {self.key} (River at {self.at - began:+.2f}s): " + " -> ".join(
            f"{h.stream} {h.by}" + (f" +{h.after:.2f}s" if i else "") for i, h in enumerate(self.hops))


def hop_times(key: str, lineage: dict[str, Any], soil_at: float) -> SlowInput | None:
    """An input's hops from its `GET /api/v1/why/KEY` answer (steps newest first, each with
    its store time) and its Soil store time (epoch seconds), pure; None when the walk did
    not reach the River input."""
    steps = list(reversed(lineage.get("steps") or []))
    if not lineage.get("complete") or not steps or any(not s.get("time") for s in steps):
        return None
    times = [_epoch(s["time"]) for s in steps] + [soil_at]
    names = [(s["stream"], s.get("by") or "?") for s in steps] + [("KV_SOIL", "decomposer")]
    hops = tuple(HopTime(stream, by, t - times[i - 1] if i else 0.0)
                 for i, ((stream, by), t) in enumerate(zip(names, times, strict=True)))
    return SlowInput(key, times[0], soil_at - times[0], hops)


@dataclasses.dataclass(frozen=True)
class Election:
    """A raft group of a stream or consumer elected a leader (JetStream's advisory)."""

    group: str  # `RIVER`, `WIND > treehouse-scoring`
    leader: str  # its node
    at: float  # the advisory's timestamp (epoch seconds)


ELECTIONS = ("$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.>", "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.>")


def election_of(subject: str, data: bytes) -> Election | None:
    """A LEADER_ELECTED advisory read (pure): `$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.<stream>`
    or `...CONSUMER.LEADER_ELECTED.<stream>.<consumer>`, JSON with `leader` and `timestamp`;
    None for anything else."""
    tokens = subject.split(".")
    if len(tokens) < 6 or tokens[4] != "LEADER_ELECTED" or tokens[3] not in ("STREAM", "CONSUMER"):
        return None
    group = tokens[5] if tokens[3] == "STREAM" else " > ".join(tokens[5:7])
    try:
        doc = json.loads(data)
        return Election(group, node_of(str(doc["leader"])), _epoch(str(doc["timestamp"])))
    except (ValueError, KeyError, TypeError):
        return None


def _epoch(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def slowest(river: dict[str, float], soil: dict[str, float], acked: list[str],
            n: int) -> list[str]:
    """The `n` acknowledged keys with the longest River -> Soil, slowest first (pure)."""
    measured = [k for k in acked if k in soil and k in river]
    return sorted(measured, key=lambda k: soil[k] - river[k], reverse=True)[:n]


def _contact(key: str, i: int) -> dict[str, Any]:
    return {"event": "contact.created",
            "contact": {"id": key, "title": "CTO", "email": f"{key}@bench.io",
                        "company": {"name": "Bench", "size": 10 + i, "industry": "tech"}}}


async def paced_contacts(nodes: list[Proc], tag: str, fault: Callable[[], Any] | None,
                         rate: float = 20.0, before: float = 5.0, after: float = 15.0) -> list[str]:
    """Send contacts `tag`-<i> at `rate` a second (each sent again, to the next node, until
    stored), `before` seconds, then `fault` (in a thread), then `after` seconds; the keys
    acknowledged."""
    acked: list[str] = []
    stop = asyncio.Event()

    async def send(http: httpx.AsyncClient, i: int) -> None:
        key = f"{tag}-{i}"
        turn = i
        while True:
            node = nodes[turn % len(nodes)]
            turn += 1
            try:
                r = await http.post(f"{node.api}/api/v1/river/contacts", json=_contact(key, i),
                                    headers={"Idempotency-Key": key})
                if r.status_code == 202:
                    acked.append(key)
                    return
            except httpx.HTTPError:
                pass
            if turn - i > 200:
                return  # given up: counted as not acknowledged
            await asyncio.sleep(0.05)

    async def pace() -> None:
        async with httpx.AsyncClient(timeout=20, trust_env=False) as http, asyncio.TaskGroup() as tasks:
            i = 0
            while not stop.is_set():
                tasks.create_task(send(http, i))
                i += 1
                await asyncio.sleep(1 / rate)

    task = asyncio.create_task(pace())
    await asyncio.sleep(before)
    if fault is not None:
        await asyncio.to_thread(fault)
    await asyncio.sleep(after)
    stop.set()
    await task
    return acked


async def _stored_times(url: str, subject: str, key: Callable[[Any], str | None]) -> dict[str, float]:
    """key -> the JetStream store time (epoch seconds) of the first message on `subject`."""
    out: dict[str, float] = {}
    nc = await _connect(url)
    try:
        sub = await nc.jetstream(timeout=5).pull_subscribe(
            subject, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE))
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=2)
            except (TimeoutError, nats.errors.TimeoutError):
                return out
            for m in msgs:
                k = key(m)
                if k is not None and k not in out:
                    out[k] = m.metadata.timestamp.timestamp()
    finally:
        await nc.close()


async def river_to_soil(url: str, acked: list[str],
                        timeout: float = 180.0) -> tuple[dict[str, float], dict[str, float]]:
    """Wait (up to `timeout`) for every acknowledged key in Soil; each key's River and Soil
    store times."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            soil = await _stored_times(url, "$KV.SOIL.>", lambda m: m.subject.removeprefix("$KV.SOIL."))
        except Exception:  # noqa: BLE001 - a consumer cannot be made yet; try again
            soil = {}
        if all(k in soil for k in acked) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1)
    deadline = time.monotonic() + 60
    while True:
        try:
            river = await _stored_times(url, "river.contacts", _contact_id)
            break
        except Exception:  # noqa: BLE001 - RIVER's consumer answers 503 while it elects a leader
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)
    return river, soil


async def lineages(api: str, keys: list[str], soil: dict[str, float]) -> list[SlowInput]:
    """Each key's hops, from the node's `GET /api/v1/why/KEY` (the stored hop headers)."""
    out: list[SlowInput] = []
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        for key in keys:
            r = await http.get(f"{api}/api/v1/why/{key}")
            found = hop_times(key, r.json(), soil[key]) if r.status_code == 200 else None
            if found is not None:
                out.append(found)
    return out


async def watching_elections(urls: list[str], work: Awaitable[T]) -> tuple[T, list[Election]]:
    """`work`'s result, and the leader elections of the forest's streams and consumers seen
    while it ran (through every node, once each, in time order)."""
    seen: dict[tuple[str, str, float], Election] = {}

    async def on_advisory(msg: Any) -> None:
        e = election_of(msg.subject, msg.data)
        if e is not None and e.group.split(" > ")[0] in FOREST_STREAMS:
            seen.setdefault((e.group, e.leader, round(e.at, 2)), e)

    conns = []
    for url in urls:
        try:
            nc = await _connect(url, connect_timeout=2, max_reconnect_attempts=-1)
        except Exception:  # noqa: BLE001 - a node being restarted: the others see the advisories
            continue
        conns.append(nc)
        for subject in ELECTIONS:
            await nc.subscribe(subject, cb=on_advisory)
    try:
        result = await work
        await asyncio.sleep(0.5)
    finally:
        for nc in conns:
            await nc.close()
    return result, sorted(seen.values(), key=lambda e: e.at)


FOREST_STREAMS = (RIVER.name, WIND.name, HUMUS.name, SOIL.name)


async def led_by(url: str, node: str) -> list[str]:
    """The raft groups of the forest's streams and their consumers that `node` leads
    (`WIND`, `WIND > treehouse-scoring`), as JetStream says through `url`."""
    nc = await _connect(url)
    try:
        js = nc.jetstream(timeout=5)
        out: list[str] = []
        for stream in FOREST_STREAMS:
            info = await js.stream_info(stream)
            if info.cluster and info.cluster.leader and node_of(info.cluster.leader) == node:
                out.append(stream)
            for c in await js.consumers_info(stream):
                if c.cluster and c.cluster.leader and node_of(c.cluster.leader) == node:
                    out.append(f"{stream} > {c.name}")
        return out
    finally:
        await nc.close()


def _contact_id(msg: Any) -> str | None:
    """The contact id a River input of `paced_contacts` carries (its Soil key)."""
    try:
        value = json.loads(msg.data)["contact"]["id"]
    except (ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, str) else None


def nats_server_pid(node: Proc) -> int:
    """The node's own nats-server (a child of its supervisor; not a witness)."""
    import psutil

    kids = [c for c in psutil.Process(node.popen.pid).children(recursive=True)
            if "nats-server" in c.name() and "witness" not in " ".join(c.cmdline())]
    if not kids:
        raise click.ClickException(f"no nats-server under node {node.name}")
    return kids[0].pid


@dataclasses.dataclass(frozen=True)
class Phase:
    """River -> Soil through one fault: the figures, the slowest inputs hop by hop, and
    what the faulty node's nats-server led when the fault began."""

    latency: Latency
    slowest: tuple[SlowInput, ...]
    led: tuple[str, ...]
    victim: str  # the node the fault hit ("" with no fault)
    began: float  # the fault's start (epoch seconds; 0 with no fault)
    elections: tuple[Election, ...]  # of the forest's groups during the phase, in time order


SLOWEST = 5  # inputs broken down hop by hop per phase


def soil_latencies(root: Path, nodes: list[Proc], rounds: int = 1) -> dict[str, list[Phase]]:
    """River -> Soil with no fault, then `rounds` times through a kill -9 of RIVER's leader
    (started again) and through an 8 s SIGSTOP of nodes[1]'s nats-server, one after the
    other, the cluster whole between."""
    victim, led, began = "", [], 0.0  # of the fault under way (note())

    def whole() -> None:
        _wait(lambda: all(cluster_ready(n.api, 3) for n in nodes), 120, "cluster whole again",  # type: ignore[arg-type]
              pause=0.1)

    def note(node: str) -> None:
        nonlocal victim, led, began
        victim, led, began = node, asyncio.run(led_by(node_url(root, nodes[0]), node)), time.time()

    def kill() -> None:
        name = river_leader([node_url(root, n) for n in nodes])
        note(name)
        restart_node(nodes, name, kill=True)

    def pause() -> None:
        pid = nats_server_pid(nodes[1])
        note(nodes[1].name)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(8)
        finally:
            os.kill(pid, signal.SIGCONT)

    out: dict[str, list[Phase]] = {"none": [], "kill": [], "pause": []}
    plan: list[tuple[str, Callable[[], None] | None]] = [("none", None)]
    plan += [phase for _ in range(rounds) for phase in (("kill", kill), ("pause", pause))]
    for i, (key, fault) in enumerate(plan):
        whole()
        victim, led, began = "", [], 0.0
        acked, elected = asyncio.run(watching_elections(
            [node_url(root, n) for n in nodes], paced_contacts(nodes, f"soil{key}{i}", fault)))
        river, soil = asyncio.run(river_to_soil(node_url(root, nodes[0]), acked))
        slow = asyncio.run(lineages(nodes[0].api or "", slowest(river, soil, acked, SLOWEST), soil))
        out[key].append(Phase(latency_figures(river, soil, acked), tuple(slow), tuple(led),
                              victim, began, tuple(elected)))
    return out


# --- the benchmark -------------------------------------------------------------------------
def run_nimsforest(root: Path, rounds: int, write_gap_too: bool = True,
                   soil_only: bool = False) -> dict[str, Any]:
    from nimsforest.forest import demo_config_path

    reg, reg_url = start_registry(root)
    nodes: list[Proc] = []
    try:
        nodes.append(start_node(root, "n1", HOSTS[0], reg_url, forest=demo_config_path()))
        _wait(lambda: cluster_ready(nodes[0].api, 1), 60, "n1 ready")  # type: ignore[arg-type]
        joined: dict[int, float] = {}
        replicated: dict[int, float] = {}
        for size, name in ((2, "n2"), (3, "n3")):
            t0 = time.monotonic()
            nodes.append(start_node(root, name, HOSTS[size - 1], reg_url))
            joined[size] = _wait(lambda s=size: cluster_size_is(nodes[0].api, s), 60,  # type: ignore[misc, arg-type]
                                 f"size {size}") - t0
            replicated[size] = _wait(lambda s=size: cluster_ready(nodes[0].api, s), 60,  # type: ignore[misc, arg-type]
                                     f"size {size} at R{size}") - t0
        join2, join3 = replicated[2], replicated[3]
        if soil_only:
            return {"soil": soil_latencies(root, nodes, rounds)}
        times, acked, lost = failover_rounds(
            nodes, rounds, leader=lambda r: river_leader([node_url(root, n) for n in nodes]), url=lambda p: node_url(root, p),
            whole=lambda p: _wait(lambda: cluster_ready(p.api, 3), 120, "cluster whole again"),  # type: ignore[arg-type]
            env=_ENV,
        )
        gaps = write_gaps(root, nodes) if write_gap_too else {}
        soil = soil_latencies(root, nodes) if write_gap_too else {}
        return {"join_1_2": join2, "join_2_3": join3, "joined_1_2": joined[2],
                "joined_2_3": joined[3], "failover": statistics.median(times),
                "failovers": times, "acked": acked, "lost": lost, "gaps": gaps, "soil": soil}
    finally:
        for n in nodes:
            n.stop()
        reg.terminate()
        reg.wait()


def failover_rounds(
    procs: list[Proc], rounds: int, *, leader: Callable[[int], str], url: Callable[[Proc], str],
    whole: Callable[[Proc], object], env: dict[str, str] | None = None,
) -> tuple[list[float], int, int]:
    """`rounds` times: kill -9 RIVER's leader, time until a publish succeeds on a survivor,
    start the victim again (same name, data and ports; `procs` is updated) and wait until
    `whole(survivor)` sees the cluster whole again. Returns (times, acked, lost)."""
    times: list[float] = []
    acked = lost = 0
    for r in range(rounds):
        name = leader(r)
        victim = next(p for p in procs if p.name == name)
        survivor = next(p for p in procs if p is not victim)
        t, a, lo = asyncio.run(failover(url(survivor), victim, url(survivor), f"river.bench{r}"))
        times.append(t)
        acked += a
        lost += lo
        procs[procs.index(victim)] = dataclasses.replace(victim, popen=subprocess.Popen(
            list(victim.popen.args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # type: ignore[arg-type]
        whole(survivor)
    return times, acked, lost


def run_bare(root: Path, rounds: int) -> dict[str, Any]:
    binary = find_nats_server()
    cports = {f"b{i}": free_port(HOSTS[i - 1]) for i in (1, 2, 3)}
    procs = start_bare(root, binary, ["b1", "b2"], cports)
    mon = lambda p: f"http://{p.host}:{p.monitor_port}"  # noqa: E731
    try:
        _wait(lambda: _get(mon(procs[0]) + "/healthz?js-meta-only=true") == {"status": "ok"}, 60, "bare meta leader")

        async def create() -> None:
            nc = await _connect(procs[0].url)
            await nc.jetstream().add_stream(StreamConfig(name="RIVER", subjects=["river.>"], num_replicas=2))
            await nc.close()

        asyncio.run(create())
        t0 = time.monotonic()
        procs += start_bare(root, binary, ["b3"], cports)
        join3 = _wait(lambda: asyncio.run(bare_scaled(procs[0].url, mon(procs[0]), 3)), 60, "bare R3",
                      pause=0.05) - t0
        times, acked, lost = failover_rounds(
            procs, rounds, leader=lambda r: river_leader([p.url for p in procs]),
            url=lambda p: p.url,
            whole=lambda p: _wait(lambda: asyncio.run(bare_scaled(p.url, mon(p), 3)), 120, "bare whole again",
                                  pause=0.1),
        )
        return {"join_2_3": join3, "failover": statistics.median(times), "failovers": times,
                "acked": acked, "lost": lost}
    finally:
        for p in procs:
            p.stop()


def _soil_lines(soil: dict[str, list[Phase]]) -> None:
    for key, label in (("none", "no fault                        "),
                       ("kill", "kill -9 of RIVER's leader       "),
                       ("pause", "8 s SIGSTOP of a nats-server    ")):
        for phase in soil[key]:
            lat = phase.latency
            click.echo(f"River->Soil, {label}  max {lat.max:6.2f}s, p99 {lat.p99:6.2f}s "
                       f"(of {lat.measured}), {lat.missing} of {lat.acked} not in Soil")
            if key == "none":
                continue
            click.echo(f"  {phase.victim}'s nats-server led: {', '.join(phase.led) or 'nothing'}")
            click.echo("  leaders elected (time after the fault began): " + (", ".join(
                f"{e.group} {e.leader} {e.at - phase.began:+.2f}s" for e in phase.elections) or "none"))
            click.echo("  the slowest inputs, hop by hop:")
            for slow in phase.slowest:
                click.echo(f"    {slow.line(phase.began)}")
    faults = [p.latency for key in ("kill", "pause") for p in soil[key]]
    every = [p.latency for phases in soil.values() for p in phases]
    click.echo(f"targets: River->Soil max <= 10s through a single fault: "
               f"{'met' if all(lat.measured and lat.max <= 10 for lat in faults) else 'NOT met'}; "
               f"every acknowledged input in Soil: "
               f"{'met' if all(lat.missing == 0 for lat in every) else 'NOT met'}")


@click.command("cluster")
@click.option("--rounds", default=9, show_default=True, type=click.IntRange(1, 20),
              help="Failovers of each kind (the killed node rejoins between rounds; medians "
                   "printed). A failover waits for NATS's randomised raft election timer "
                   "(seconds apart from one kill to the next), so a median wants several rounds.")
@click.option("--soil-only", is_flag=True,
              help="Only River->Soil through the demo forest: no fault, then --rounds times a "
                   "kill -9 and an 8 s SIGSTOP, each with what the faulty node led, the "
                   "leaders elected and the slowest inputs hop by hop (no bare nats-server, "
                   "failovers or write gaps; about a minute a round).")
def command(rounds: int, soil_only: bool) -> None:
    """Peer join latency, failover after kill -9 and the write gap of planned stops, with
    bare nats-server figures; River->Soil through faults."""
    with tempfile.TemporaryDirectory(prefix="nimsforest-bench-cluster-") as tmp:
        root = Path(tmp)
        if soil_only:
            _soil_lines(run_nimsforest(root / "nf", rounds, soil_only=True)["soil"])
            return
        bare = run_bare(root / "bare", rounds)
        nf = run_nimsforest(root / "nf", rounds)
    fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    # the nodes' stabilisation time (DEPLOYMENT.md): a new node gets replicas after it
    stabilise = parse_duration(_ENV.get("CLUSTER_STABILISATION_TIME", "10s"))
    click.echo("step                                   nimsforest      bare nats-server")
    click.echo(f"join 1->2 (start -> size 2, routed)    {nf['joined_1_2']:8.2f}s      n/a (a lone clustered server cannot serve)")
    click.echo(f"join 2->3 (start -> size 3, routed)    {nf['joined_2_3']:8.2f}s")
    click.echo(f"  then at R2 (after the {stabilise:.0f}s stabilisation) {nf['join_1_2']:8.2f}s")
    click.echo(f"  then at R3 (after the {stabilise:.0f}s stabilisation) {nf['join_2_3']:8.2f}s      "
               f"{bare['join_2_3']:8.2f}s (bare: start -> R3, scaled at once by hand)")
    click.echo(f"failover after kill -9 (median)        {nf['failover']:8.2f}s      {bare['failover']:8.2f}s")
    click.echo(f"  each round                           {fmt(nf['failovers'])}  |  {fmt(bare['failovers'])}")
    click.echo(f"acknowledged messages lost             {nf['lost']} of {nf['acked']}      {bare['lost']} of {bare['acked']}")
    gaps: dict[str, Gap] = nf["gaps"]
    for key, label in (("drain", "drain-based stop of RIVER's leader"),
                       ("rolling", "rolling restart of three nodes  "),
                       ("kill", "kill -9 of RIVER's leader        ")):
        g = gaps[key]
        click.echo(f"HTTP write gap, {label}  {g.longest:6.2f}s, {failures_line(g.failures)}, "
                   f"{g.lost} of {g.acked} lost")
    planned = [gaps["drain"], gaps["rolling"]]
    click.echo(f"targets: planned stops 0 failed and gap <= 1s: "
               f"{'met' if all(g.failed == 0 and g.longest <= 1 for g in planned) else 'NOT met'}; "
               f"kill -9 gap <= bare failover: "
               f"{'met' if gaps['kill'].longest <= bare['failover'] else 'NOT met'}")
    _soil_lines(nf["soil"])
    joins = (nf["joined_1_2"], nf["joined_2_3"])
    click.echo(f"targets: join <= 3s: {'met' if max(joins) <= 3 else 'NOT met'}; "
               f"failover <= bare + 1s: {'met' if nf['failover'] <= bare['failover'] + 1 else 'NOT met'}; "
               f"nothing lost: {'met' if nf['lost'] == 0 else 'NOT met'}")
