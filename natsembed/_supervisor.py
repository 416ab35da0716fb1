"""EmbeddedNats: a node's nats-server, clustered from its first boot, plus a local witness.

A clustered JetStream server cannot serve alone (it needs routes and a meta group of at
least two). A node that is alone therefore runs a *witness* beside it: a second, small
nats-server on loopback, in the same cluster, tagged `role:witness`. The meta group
{node, witness} elects a leader at once, so streams can be created right after start.
Every NimsForest stream is placed with the tag `role:node`, so nothing ever lands on the
witness. When a real peer joins, the witness is retired (stepped down if it leads, removed
from the meta group, stopped, its data deleted); when a node is left alone again after a
quorum rescue, a new witness is started.

Data directory layout:

    <data_dir>/nats.conf          the node's config (0600)
    <data_dir>/credentials.json   generated users (0600)
    <data_dir>/store/             the node's JetStream store
    <data_dir>/witness/           the witness' name, config and store, while it exists
    <data_dir>/generation         how many times the node started afresh (its server name,
                                  natsembed._names); absent until the first time
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from natsembed._config import (
    SYSTEM_ACCOUNT,
    ClusterConfig,
    JetStreamConfig,
    ServerConfig,
    TLSConfig,
    hostport,
    render_config,
    write_config,
)
from natsembed._credentials import Credentials, load_or_create, write_private
from natsembed._election import PAIR, MetaElection, PairObservation, Prompt, plan_prompt
from natsembed._monitor import MonitorClient
from natsembed._names import WITNESS_MARK
from natsembed._names import server_name as named_server
from natsembed._net import WILDCARDS, advertise_host, free_port, local_host
from natsembed._process import ProcessSnapshot, ProcessState, RestartPolicy, ServerProcess, Timeouts
from natsembed._store import KEEP_REMOVED, set_aside, stored_streams
from natsembed.errors import MonitorUnavailable, NatsEmbedError, StartFailed

if TYPE_CHECKING:
    from natsembed._system import SystemClient

log = logging.getLogger("natsembed")

NODE_TAG = "role:node"
WITNESS_TAG = "role:witness"


def is_witness(server_name: str) -> bool:
    """True for witness servers, which never hold streams."""
    return WITNESS_MARK in server_name


def _witness_name(node: str) -> str:
    return f"{node}{WITNESS_MARK}{secrets.token_hex(3)}"


ZONE_PREFIX = "zone:"
_FIRST_ELECTION_RESTARTS = 3  # then the start timeout applies (raft elects in the end)
_ELECTION_PROMPTS = 3  # a restarted pair asked to elect now; then raft's own timer applies
_META_LEADING_WAIT = 5.0  # s: a few raft heartbeats for an elected leader to lead (leads_meta)
_WITNESS_PORT_ATTEMPTS = 3  # a witness' ports are picked free, then bound: another process may win


class EmbeddedConfig(BaseModel):
    """How to run a node's nats-server. Immutable; routes change through set_routes()."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    data_dir: Path
    binary: Path
    cluster_name: str = "nimsforest"
    bind: str = "127.0.0.1"
    advertise: str | None = None
    client_port: int = 4222
    cluster_port: int = 6222
    monitor_port: int = 8222  # 0: no public monitoring; a private loopback port is used
    routes: tuple[str, ...] = ()  # peers' cluster addresses (host:port)
    witness: bool = True  # run a witness (a node that founds a cluster or is alone)
    extra_tags: tuple[str, ...] = ()
    # replicas in distinct zones: rendered as JetStream's unique_tag when this node has a
    # tag with this prefix among extra_tags (None: never)
    zone_prefix: str | None = ZONE_PREFIX
    reserved_ports: tuple[int, ...] = ()  # ports the caller binds later (e.g. its API): never picked
    jetstream_max_mem: str = "256MB"
    jetstream_max_file: str = "10GB"
    cluster_secret: str | None = None  # forest-wide: route credentials derive from it
    authorize_routes: bool = True  # False: accept routes without credentials
    tls: TLSConfig | None = None
    policy: RestartPolicy = RestartPolicy()
    timeouts: Timeouts = Timeouts()


@dataclass(frozen=True)
class EmbeddedSnapshot:
    node: ProcessSnapshot
    witness: ProcessSnapshot | None
    witness_name: str | None
    routes: tuple[str, ...]
    client_address: str
    cluster_address: str
    monitor_url: str
    election: MetaElection | None = None  # how the meta group got its leader at the last start


class _Witness:
    """The witness' identity and process (an implementation detail of EmbeddedNats)."""

    def __init__(self, owner: EmbeddedNats, name: str) -> None:
        self.dir = owner.config.data_dir / "witness"
        self.name = name
        taken = (*owner.own_ports(), owner.monitor_port)
        self.cluster_port = free_port("127.0.0.1", avoid=taken)
        self.monitor_port = free_port("127.0.0.1", avoid=(*taken, self.cluster_port))
        self.monitor = MonitorClient(f"http://127.0.0.1:{self.monitor_port}")
        cfg = owner.config
        self.process = ServerProcess(
            name=name,
            binary=cfg.binary,
            config_path=self.dir / "witness.conf",
            monitor=self.monitor,
            pid_file=self.dir / "witness.pid",
            policy=cfg.policy,
            timeouts=cfg.timeouts,
            removal_expected=True,  # retire_witness removes it from the meta group
        )

    @property
    def cluster_address(self) -> str:
        return hostport("127.0.0.1", self.cluster_port)

    async def write_config(self, owner: EmbeddedNats) -> None:
        """Render, check (nats-server -t) and write the witness' config."""
        await write_config(
            owner.config.binary,
            self.process.config_path,
            render_config(self.server_config(owner), generator=f"witness of {owner.name}"),
        )

    def server_config(self, owner: EmbeddedNats) -> ServerConfig:
        cfg = owner.config
        return ServerConfig(
            server_name=self.name,
            client_listen="127.0.0.1:-1",
            monitor_listen=hostport("127.0.0.1", self.monitor_port),
            tags=(WITNESS_TAG,),
            # the owner's unique_tag: the witness may lead the meta group, and the leader places
            jetstream=JetStreamConfig(store_dir=self.dir / "store", max_mem="64MB", max_file="256MB",
                                      unique_tag=owner.unique_tag),
            cluster=ClusterConfig(
                name=cfg.cluster_name,
                listen=self.cluster_address,
                advertise=self.cluster_address,
                routes=(hostport(local_host(cfg.bind), cfg.cluster_port),),
                authorize=cfg.authorize_routes,
            ),
            credentials=owner.credentials,
        )


GENERATION_FILE = "generation"


def _read_generation(path: Path) -> int:
    """The node's generation from its data directory (0 when absent or unreadable)."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    if not text.isdigit():
        log.warning("%s does not hold a generation number (%r); using 0", path, text[:40])
        return 0
    return int(text)


def has_meta_state(data_dir: Path) -> bool:
    """True when the node in `data_dir` has JetStream cluster state (a meta log)."""
    return (data_dir / "store" / "jetstream" / SYSTEM_ACCOUNT / "_js_" / "_meta_").is_dir()


async def _wait_listening(host: str, port: int, abort: asyncio.Future[None], timeout: float) -> None:
    """Wait until (host, port) accepts TCP connections, or `abort` finishes, or timeout."""
    deadline = time.monotonic() + timeout
    while not abort.done() and time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.002)
            continue
        writer.close()
        return


class EmbeddedNats:
    """Supervises the node's nats-server and, while the node is alone, its witness."""

    def __init__(self, config: EmbeddedConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.credentials: Credentials = load_or_create(config.data_dir).with_cluster_secret(
            config.cluster_secret
        )
        self._routes: tuple[str, ...] = tuple(dict.fromkeys(config.routes))
        self._advertise_host = advertise_host(config.bind, config.advertise)
        self._local_host = local_host(config.bind)
        self.monitor_port = config.monitor_port or free_port("127.0.0.1", avoid=self.own_ports())
        monitor_host = config.bind if config.monitor_port else "127.0.0.1"
        self._monitor_listen = hostport(monitor_host, self.monitor_port)
        self.monitor_url = f"http://{hostport(local_host(monitor_host), self.monitor_port)}"
        self.monitor = MonitorClient(self.monitor_url)
        self.node = ServerProcess(
            name=config.name,
            binary=config.binary,
            config_path=config.data_dir / "nats.conf",
            monitor=self.monitor,
            pid_file=config.data_dir / "nats-server.pid",
            policy=config.policy,
            timeouts=config.timeouts,
        )
        self._witness: _Witness | None = None
        self._election: MetaElection | None = None
        self._generation = _read_generation(config.data_dir / GENERATION_FILE)
        self._lock = asyncio.Lock()

    # --- addresses ---------------------------------------------------------------------------
    def own_ports(self) -> tuple[int, ...]:
        """The ports configured for this node and its caller (a witness never takes one)."""
        cfg = self.config
        return (cfg.client_port, cfg.cluster_port, cfg.monitor_port, *cfg.reserved_ports)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def server_name(self) -> str:
        """This node's nats-server name: the node's name, with a generation after each time
        it started afresh (natsembed._names)."""
        return named_server(self.config.name, self._generation)

    @property
    def cluster_address(self) -> str:
        """The address peers dial for routes (what the registry advertises)."""
        return hostport(self._advertise_host, self.config.cluster_port)

    @property
    def client_address(self) -> str:
        return hostport(self._advertise_host, self.config.client_port)

    @property
    def client_url(self) -> str:
        """nats:// URL for local clients of the application account (with credentials)."""
        c = self.credentials
        return f"nats://{c.app_user}:{c.app_password}@{hostport(self._local_host, self.config.client_port)}"

    @property
    def system_url(self) -> str:
        return f"nats://{hostport(self._local_host, self.config.client_port)}"

    @property
    def routes(self) -> tuple[str, ...]:
        return self._routes

    @property
    def witness_name(self) -> str | None:
        return self._witness.name if self._witness else None

    @property
    def store_dir(self) -> Path:
        return self.config.data_dir / "store"  # has_meta_state() knows this layout

    def has_meta_state(self) -> bool:
        """True when this node has been part of a JetStream cluster before (it has a log)."""
        return has_meta_state(self.config.data_dir)

    def _saved_witness_name(self) -> str | None:
        path = self.config.data_dir / "witness" / "name"
        return path.read_text().strip() or None if path.exists() else None

    # --- config ------------------------------------------------------------------------------
    def server_config(self) -> ServerConfig:
        cfg = self.config
        routes = list(self._routes)
        if self._witness is not None:
            routes.append(self._witness.cluster_address)
        return ServerConfig(
            server_name=self.server_name,
            client_listen=hostport(cfg.bind, cfg.client_port),
            client_advertise=self.client_address if cfg.bind in WILDCARDS else None,
            monitor_listen=self._monitor_listen,
            tags=(NODE_TAG, f"node:{cfg.name}", *cfg.extra_tags),
            jetstream=JetStreamConfig(
                store_dir=self.store_dir, max_mem=cfg.jetstream_max_mem, max_file=cfg.jetstream_max_file,
                unique_tag=self.unique_tag,
            ),
            cluster=ClusterConfig(
                name=cfg.cluster_name,
                listen=hostport(cfg.bind, cfg.cluster_port),
                advertise=self.cluster_address,
                routes=tuple(routes),
                authorize=cfg.authorize_routes,
            ),
            credentials=self.credentials,
            tls=cfg.tls,
        )

    @property
    def zone(self) -> str | None:
        """This node's zone: the value of its first tag with the zone prefix."""
        prefix = self.config.zone_prefix
        tags = [t for t in self.config.extra_tags if prefix and t.startswith(prefix)]
        return tags[0][len(prefix or ""):] if tags else None

    @property
    def unique_tag(self) -> str | None:
        return self.config.zone_prefix if self.zone else None

    def render(self) -> str:
        return render_config(self.server_config(), generator=f"node {self.config.name}")

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self, *, wait_jetstream: bool = True) -> None:
        """Start the node's nats-server (and a witness when configured or left over).

        With `wait_jetstream`, also wait until the JetStream meta group has a leader,
        i.e. streams can be created. Raises StartFailed with one sentence on failure;
        nothing is left running then.
        """
        async with self._lock:
            witness_name = self._saved_witness_name()
            # a first boot of a node with a new witness and no peers: the pair's first meta
            # election is watched (see _first_election)
            fresh = witness_name is None and not self._routes and not self.has_meta_state()
            # a lone node restarted on its log with its witness: see _prompted_election
            lone_restart = witness_name is not None and not self._routes and self.has_meta_state()
            self._election = None
            if witness_name is None and self.config.witness:
                witness_name = _witness_name(self.config.name)
            if witness_name is not None:
                self._witness = _Witness(self, witness_name)
                self._witness.dir.mkdir(parents=True, exist_ok=True)
                write_private(self._witness.dir / "name", witness_name + "\n")
            elif not self._routes and not self.has_meta_state():
                raise StartFailed(
                    f"Node {self.name} has no peers and no witness: a clustered JetStream "
                    "server cannot start alone."
                )
            for attempt in range(1, _WITNESS_PORT_ATTEMPTS + 1):
                await self._write_configs()
                try:
                    await self._spawn_processes()
                    break
                except BaseException as exc:
                    await self._stop_all()
                    if attempt == _WITNESS_PORT_ATTEMPTS or not self._witness_port_taken(exc):
                        raise
                    assert self._witness is not None
                    log.info("%s; starting witness %s on other ports", exc, self._witness.name)
                    self._witness = _Witness(self, self._witness.name)
        if wait_jetstream:
            if fresh and self._witness is not None:
                await self._first_election()
            elif lone_restart and self._witness is not None:
                await self._prompted_election(self._witness)
            if not await self.wait_jetstream(self.config.timeouts.start):
                await self.stop()
                raise StartFailed(
                    f"JetStream on node {self.name} found no meta leader within "
                    f"{self.config.timeouts.start:g}s (are its peers reachable?)"
                )
            if self._election is None:
                self._election = MetaElection.RAFT
            if self._witness is not None:
                await self._wait_meta_leading(self._witness)

    @property
    def election(self) -> MetaElection | None:
        """How the meta group got its leader at the last start (None: not waited for)."""
        return self._election

    async def _first_election(self) -> None:
        """A fresh node and witness elect their first meta leader within raft's campaign
        delay (0.1-0.8 s). When the first vote is lost (seen in about one start in seven
        on a busy machine: the servers route to each other while the first campaign is
        under way), raft waits its election timeout, 4-9 s, before the next. Nothing is
        stored yet on a first boot, so both servers are started again on empty stores
        instead: a new first election costs well under a second."""
        for attempt in range(_FIRST_ELECTION_RESTARTS):
            if await self.wait_jetstream(self.config.timeouts.first_election):
                self._election = MetaElection.FIRST_AGAIN if attempt else MetaElection.FIRST
                return
            w = self._witness
            assert w is not None
            log.info(
                "The first JetStream meta election of %s and witness %s did not conclude "
                "within %gs (a lost first vote waits 4-9 s for the next): starting both "
                "again on empty stores", self.name, w.name, self.config.timeouts.first_election,
            )
            async with self._lock:
                await self._stop_all(at_once=True)
                shutil.rmtree(self.store_dir, ignore_errors=True)
                shutil.rmtree(w.dir / "store", ignore_errors=True)
                await self._spawn_processes()

    async def _prompted_election(self, w: _Witness) -> None:
        """A lone node and its witness restarted on their logs only recover their meta
        group, and raft waits its election timeout (4-9 s) before either campaigns. Once
        both servers are up and routed to each other (and to no other server), both are
        asked to campaign now: `$JS.API.META.RESCUE` at the group's unchanged quorum of 2,
        which lowers nothing and only re-arms raft's election timer with its campaign
        delay (0.1-0.8 s); see natsembed._election for why that is safe, and when it is
        not asked. A prompt that does not conclude within the first-election allowance is
        sent again, up to _ELECTION_PROMPTS times; then raft's own timer decides."""
        prompts = 0
        deadline = time.monotonic() + self.config.timeouts.start
        while time.monotonic() < deadline and prompts < _ELECTION_PROMPTS:
            decision = plan_prompt(await self._observe_pair(w))
            if decision is Prompt.ELECTED:
                self._election = MetaElection.PROMPTED if prompts else MetaElection.RAFT
                return
            if decision is Prompt.REFUSE:
                log.info(
                    "The JetStream meta group of %s is not just it and witness %s at quorum 2 "
                    "(another server, a lowered quorum, or a nats-server older than 2.15): its "
                    "election is left to raft's own timing", self.name, w.name,
                )
                return
            if decision is Prompt.WAIT:
                if self.node.state is ProcessState.FAILED:
                    return
                await asyncio.sleep(0.01)
                continue
            if not prompts:
                log.info(
                    "Node %s and witness %s recovered their JetStream meta log without a leader: "
                    "asking both to elect one now (META.RESCUE at the unchanged quorum of 2) "
                    "rather than after raft's 4-9 s election timeout", self.name, w.name,
                )
            prompts += 1
            await self._prompt(w)
            if await self.wait_jetstream(self.config.timeouts.first_election):
                self._election = MetaElection.PROMPTED
                return
        log.info(
            "The JetStream meta group of %s and witness %s did not elect within %d prompt(s); "
            "waiting for raft's own election", self.name, w.name, prompts,
        )

    async def _wait_meta_leading(self, w: _Witness) -> None:
        """When the meta leader is this node or its witness, wait until it leads as far as
        JetStream is concerned (see MonitorClient.leads_meta): a stream or consumer
        created in between would wait for its request's timeout. Usually at once; about
        a second (raft's heartbeat) when the new leader's first entry had to be sent again.
        A leader elsewhere, or no confirmation within _META_LEADING_WAIT, ends the wait."""
        deadline = time.monotonic() + _META_LEADING_WAIT
        while time.monotonic() < deadline:
            try:
                meta = (await self.monitor.jsz()).meta_cluster
            except MonitorUnavailable:
                meta = None
            leader = meta.leader if meta is not None else None
            if leader not in (self.server_name, w.name):
                return  # a peer leads, or none yet (wait_jetstream has had its say)
            if await (self.monitor if leader == self.server_name else w.monitor).leads_meta():
                return
            await asyncio.sleep(0.01)
        log.debug("JetStream on %s did not confirm its meta leader within %gs", self.name,
                  _META_LEADING_WAIT)

    async def _observe_pair(self, w: _Witness) -> PairObservation:
        try:
            node_jsz, witness_jsz, node_routes, witness_routes = await asyncio.gather(
                self.monitor.jsz(), w.monitor.jsz(), self.monitor.routez(), w.monitor.routez()
            )
        except MonitorUnavailable:  # a server still starting its monitor: look again
            return PairObservation(self.server_name, w.name, None, None, (), ())
        return PairObservation(
            node=self.server_name, witness=w.name,
            node_meta=node_jsz.meta_cluster, witness_meta=witness_jsz.meta_cluster,
            node_routes=node_routes.remote_names, witness_routes=witness_routes.remote_names,
        )

    async def _prompt(self, w: _Witness) -> None:
        """Ask the pair's servers (the request reaches both) to campaign now."""
        try:
            async with self.system_client(timeout=1.0) as sysc:
                await sysc.meta_rescue(quorum_needed=PAIR)
        except NatsEmbedError as exc:  # a leader meanwhile, or a server not listening yet
            log.debug("Election prompt of %s and witness %s: %s", self.name, w.name, exc)

    async def _write_configs(self) -> None:
        writes = [write_config(self.config.binary, self.node.config_path, self.render())]
        if self._witness is not None:
            writes.append(self._witness.write_config(self))
        log.debug("Rendered the configuration of %s; checking it with nats-server -t", self.name)
        await asyncio.gather(*writes)
        log.debug("Configuration checked and written; spawning nats-server")

    async def _spawn_processes(self) -> None:
        if self._witness is None:
            await self.node.start()
            return
        # The node starts once the witness listens for routes: its route to the witness
        # then connects on the first try (nats-server retries a failed route after 1s).
        w = self._witness
        witness_start = asyncio.ensure_future(w.process.start())
        try:
            await _wait_listening("127.0.0.1", w.cluster_port, witness_start, self.config.timeouts.start)
            if witness_start.done():
                witness_start.result()  # the witness failed: its error, not the node's
            await self.node.start()
        finally:
            await witness_start

    def _witness_port_taken(self, exc: BaseException) -> bool:
        """True when the witness could not listen on a port we picked for it: another
        process took the port between our pick and the witness' bind."""
        w = self._witness
        return (
            w is not None
            and isinstance(exc, StartFailed)
            and exc.process == w.name
            and exc.port_in_use in (w.cluster_port, w.monitor_port)
        )

    async def wait_jetstream(self, timeout: float) -> bool:
        """Wait until this server's JetStream meta group has a leader; False on timeout."""
        started = time.monotonic()
        deadline = started + timeout
        pause = 0.005
        while time.monotonic() < deadline:
            if await self.monitor.healthz(js_meta_only=True):
                return True
            if self.node.state is ProcessState.FAILED:
                return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.02 if time.monotonic() - started < 5 else 0.2)
        return False

    async def set_routes(self, routes: Sequence[str]) -> bool:
        """Route to exactly `routes` (peers' cluster addresses, deduplicated).

        Rewrite + SIGHUP, confirmed by nats-server; returns False when nothing changed.
        Raises ReloadRejected (old routes keep running) or NotReady.
        """
        async with self._lock:
            wanted = tuple(dict.fromkeys(r for r in routes if r != self.cluster_address))
            if wanted == self._routes:
                return False
            previous, self._routes = self._routes, wanted
            try:
                return await self.node.reload(self.render())
            except Exception:
                self._routes = previous
                raise

    async def retire_witness(self) -> bool:
        """Remove the witness from the cluster for good (a real peer has joined).

        Refuses (NatsEmbedError) if the witness holds any stream. Steps it down first if
        it is the meta leader, removes it from the meta group, stops it, drops its route
        and deletes its data. Returns False when there is no witness.
        """
        async with self._lock:
            w = self._witness
            if w is None:
                return False
            if w.process.state is ProcessState.READY:
                held = (await w.monitor.jsz()).streams
                if held:
                    raise NatsEmbedError(
                        f"Witness {w.name} holds {held} stream(s); it is kept until they move."
                    )
            async with self.system_client() as sysc:
                for _ in range(50):
                    meta = (await self.monitor.jsz()).meta_cluster
                    if meta is None or meta.leader not in (w.name, None):
                        break
                    if meta.leader == w.name:
                        try:
                            await sysc.meta_stepdown(preferred=self.server_name)
                        except NatsEmbedError as exc:
                            log.debug("Meta stepdown of witness %s: %s", w.name, exc)
                    await asyncio.sleep(0.2)
                await sysc.server_remove(w.name)
            await w.process.stop()
            await w.monitor.close()
            self._witness = None
            await self.node.reload(self.render())
            shutil.rmtree(w.dir, ignore_errors=True)
            log.info("Witness %s retired from cluster %s", w.name, self.config.cluster_name)
            return True

    async def start_witness(self) -> str:
        """Start a new witness beside a node that is alone (after a quorum rescue)."""
        async with self._lock:
            if self._witness is not None:
                return self._witness.name
            name = _witness_name(self.config.name)
            w = _Witness(self, name)
            w.dir.mkdir(parents=True, exist_ok=True)
            write_private(w.dir / "name", name + "\n")
            await w.write_config(self)
            await w.process.start()
            self._witness = w
            try:
                await self.node.reload(self.render())
            except Exception:
                self._witness = None
                await w.process.stop()
                shutil.rmtree(w.dir, ignore_errors=True)
                raise
            log.info("Witness %s started beside node %s", name, self.name)
            return name

    def stored_streams(self) -> tuple[str, ...]:
        """Streams that have a folder in this node's JetStream store."""
        return stored_streams(self.store_dir)

    async def start_afresh(self, keep: int = KEEP_REMOVED) -> Path:
        """Stop the node's nats-server, set its JetStream store aside (renamed into
        removed-<time> in the data directory; the newest `keep` are kept) and start it
        again on an empty store under the next server name (its generation, kept in the
        data directory), so the meta leader adds it as a new peer at once (a removed name
        is refused for 5 minutes). Returns where the old store now is. The witness, if
        any, keeps running."""
        async with self._lock:
            await self.node.stop()
            aside = set_aside(self.store_dir, self.config.data_dir, keep)
            # the store is aside before the name changes: a crash in between restarts the
            # old name on an empty store, which heals again (never a new name on an old store)
            self._generation += 1
            write_private(self.config.data_dir / GENERATION_FILE, f"{self._generation}\n")
            await write_config(self.config.binary, self.node.config_path, self.render())
            await self.node.start()
        log.debug("JetStream store of %s set aside in %s; started on an empty store as %s",
                  self.name, aside, self.server_name)
        return aside

    def system_client(self, timeout: float = 5.0) -> SystemClient:
        from natsembed._system import SystemClient

        c = self.credentials
        return SystemClient(self.system_url, c.sys_user, c.sys_password, timeout)

    async def stop(self) -> None:
        """Stop in order: the node (lame duck, SIGINT, SIGKILL), then the witness."""
        async with self._lock:
            await self._stop_all()

    async def _stop_all(self, *, at_once: bool = False) -> None:
        # Both in order (lame duck, SIGINT, SIGKILL) and at the same time: the witness only
        # matters while the node runs, so there is nothing to hand over between them.
        stops = [self.node.stop(at_once=at_once)]
        if self._witness is not None:
            stops.append(self._witness.process.stop(at_once=at_once))
        await asyncio.gather(*stops)
        if self._witness is not None:
            await self._witness.monitor.close()

    async def close(self) -> None:
        await self.monitor.close()

    def snapshot(self) -> EmbeddedSnapshot:
        w = self._witness
        return EmbeddedSnapshot(
            node=self.node.snapshot(),
            witness=w.process.snapshot() if w else None,
            witness_name=w.name if w else None,
            routes=self._routes,
            client_address=self.client_address,
            cluster_address=self.cluster_address,
            monitor_url=self.monitor_url,
            election=self._election,
        )
