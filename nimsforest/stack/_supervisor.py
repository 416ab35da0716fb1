"""The stack supervisor: decide purely (resolve, plan), act thinly (start, stop, reconfigure).

`Stack.apply(desired)` carries out `plan(desired, running)`. `supervise()` is the whole
life of `nimsforest stack up`: take the lock, apply the manifests, then regenerate and
apply again on SIGHUP (`stack reload`) or when a manifest file changes (watched with
watchfiles), until SIGTERM/SIGINT (`stack down`, Ctrl-C) stops every service in reverse
dependency order. A manifest made invalid at run time is one logged sentence: what runs
keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nimsforest.stack._compose import to_process_compose
from nimsforest.stack._manifest import Condition, load_manifests
from nimsforest.stack._plan import Plan, plan
from nimsforest.stack._resolve import Desired, StackPaths, resolve, with_records
from nimsforest.stack._runner import ServiceRunner
from nimsforest.stack._state import Lock, StackPhase, StackStatus, write_status
from nimsforest.stack.errors import StackError, StackRunning

if TYPE_CHECKING:
    from nimsforest.stack._probe import Prober

log = logging.getLogger("nimsforest.stack")

COMPOSE_FILE = "process-compose.yaml"
EnvLoader = Callable[[], Mapping[str, str]]


@dataclass(frozen=True)
class RecordSet:
    """Services from a PocketBase collection: service name -> manifest JSON text."""

    collection: str = ""
    manifests: Mapping[str, str] = field(default_factory=dict)


def desired_services(paths: StackPaths, env: Mapping[str, str],
                     records: RecordSet = RecordSet()) -> Desired:
    """Read the manifests under `paths.services` (plus `records`) and resolve them.

    Raises ManifestInvalid."""
    manifests = load_manifests(paths.services)
    if records.manifests:
        manifests = with_records(manifests, records.manifests, records.collection)
    return resolve(manifests, env, paths)


def ports_in_use(desired: Desired) -> tuple[str, ...]:
    """Sentences for the declared ports that another process holds already (checked by
    binding each one, on all addresses, for a moment). Impure: called before a start."""
    import socket

    taken: list[str] = []
    for spec in desired.services:
        for port_name, port in spec.ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(("0.0.0.0", port.port))
                except OSError:
                    taken.append(f"Port {port.port} ({spec.name} {port_name}) is in use by "
                                 "another process.")
    return tuple(taken)


class Stack:
    """The running services, by name, and the plan-carrying-out that changes them."""

    def __init__(self, paths: StackPaths) -> None:
        self.paths = paths
        self.phase = StackPhase.STARTING
        self._runners: dict[str, ServiceRunner] = {}
        self._order: tuple[str, ...] = ()
        self._changed = asyncio.Event()  # set (and replaced) on every change
        self._prober: Prober | None = None
        self._apply_lock = asyncio.Lock()
        self.desired = Desired()  # as last applied
        self.records = RecordSet()  # services from a PocketBase collection, as last read

    def prober(self) -> Prober:
        """The HTTP half (httpx), made at the first probe: after the first services were
        spawned, as a node spawns nats-server before it imports its heavy half."""
        if self._prober is None:
            from nimsforest.stack._probe import Prober

            self._prober = Prober()
        return self._prober

    def runner(self, name: str) -> ServiceRunner | None:
        return self._runners.get(name)

    # --- status ----------------------------------------------------------------------------
    def status(self) -> StackStatus:
        runners = [self._runners[n] for n in self._order if n in self._runners]
        return StackStatus(supervisor_pid=os.getpid(), phase=self.phase, updated_at=time.time(),
                           services=tuple(r.status() for r in runners))

    def _on_change(self) -> None:
        try:
            write_status(self.paths.stack, self.status())
        except OSError as exc:  # the status file is a view; the stack runs on without it
            log.warning("Cannot write the stack status: %s", exc)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for(self, dep: str, condition: Condition) -> None:
        while True:
            runner = self._runners.get(dep)
            if runner is not None and runner.meets(condition):
                return
            await self._changed.wait()

    # --- acting ----------------------------------------------------------------------------
    async def apply(self, desired: Desired) -> Plan:
        async with self._apply_lock:
            self.paths.stack.mkdir(parents=True, exist_ok=True)
            running = {n: r.spec for n, r in self._runners.items()}
            p = plan(desired, running, self._order)
            if not p.changes_nothing:
                log.info("Applying the manifests: %s", p.describe())
            wanted = desired.by_name()
            for name in p.stop:
                await self._runners.pop(name).stop()
            for name in reversed(p.restart):  # dependents first, as a stop in reverse order
                await self._runners.pop(name).stop()
            self._order = desired.names()
            for name in p.reconfigure:
                await self._runners[name].reconfigure(wanted[name])
            for name in desired.names():
                if name in p.restart or name in p.start:
                    runner = ServiceRunner(wanted[name], self.paths, self.prober, self.wait_for,
                                           self._on_change)
                    self._runners[name] = runner
                    runner.start()
            self.desired = desired
            self.phase = StackPhase.UP
            self._on_change()
            # a record of what runs, written while the services start (off their path)
            await asyncio.to_thread(self._write_compose, desired)
            return p

    def _write_compose(self, desired: Desired) -> None:
        self.paths.stack.mkdir(parents=True, exist_ok=True)
        (self.paths.stack / COMPOSE_FILE).write_text(to_process_compose(desired))

    async def stop_all(self) -> None:
        self.phase = StackPhase.STOPPING
        self._on_change()
        for name in reversed(self._order):
            runner = self._runners.get(name)
            if runner is not None:
                await runner.stop()
        self._runners.clear()
        self.phase = StackPhase.STOPPED
        write_status(self.paths.stack, self.status())
        if self._prober is not None:
            await self._prober.aclose()


async def supervise(paths: StackPaths, env: EnvLoader, first: Desired | None = None) -> None:
    """Run the stack until SIGTERM or SIGINT. Raises StackRunning or ManifestInvalid first.

    `first` is the desired services when the caller has just resolved them (else they are
    resolved here)."""
    lock = Lock(paths.stack)
    if not lock.acquire():
        from nimsforest.stack._state import running_supervisor

        pid = running_supervisor(paths.stack) or 0
        raise StackRunning(f"The stack in {paths.root} is already running (pid {pid}).", pid)
    try:
        if first is None:
            first = desired_services(paths, env())  # invalid manifests: nothing starts
        stack = Stack(paths)
        stop = asyncio.Event()
        reload = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        log.info("Stack supervisor started (pid %d) for %s", os.getpid(), paths.root)
        try:
            await stack.apply(first)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(_watch(paths, reload, stop))
                tg.create_task(_reloads(stack, paths, env, reload, stop))
                tg.create_task(_collection_loop(stack, reload, stop))
                await stop.wait()
        finally:
            log.info("Stopping the stack")
            await stack.stop_all()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            log.info("Stack stopped")
    finally:
        lock.release()


async def _watch(paths: StackPaths, reload: asyncio.Event, stop: asyncio.Event) -> None:
    """Set `reload` whenever a file under the manifests folder changes."""
    import watchfiles

    while not stop.is_set():
        try:
            async for _ in watchfiles.awatch(paths.services, stop_event=stop, debounce=200,
                                             step=50, recursive=True):
                log.info("A manifest changed; regenerating the stack")
                reload.set()
        except Exception as exc:  # noqa: BLE001 - the watcher must not end the stack
            log.warning("Watching %s failed (%s); trying again", paths.services, exc)
            await asyncio.sleep(2.0)


async def _reloads(stack: Stack, paths: StackPaths, env: EnvLoader, reload: asyncio.Event,
                   stop: asyncio.Event) -> None:
    while not stop.is_set():
        waiter = asyncio.create_task(reload.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for t in (waiter, stopper):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if stop.is_set():
            return
        reload.clear()
        try:
            applied = await stack.apply(desired_services(paths, env(), stack.records))
            log.info("Regenerated the stack: %s", applied.describe())
        except StackError as exc:
            log.error("Not applied: %s The running services are unchanged.", exc)
        except Exception:
            log.exception("Regenerating the stack failed; the running services are unchanged")


COLLECTION_POLL_S = 1.0
_COLLECTION_FIELDS: list[dict[str, object]] = [
    {"name": "name", "type": "text", "required": True, "max": 63},
    {"name": "manifest", "type": "json", "maxSize": 1_000_000},
    {"name": "enabled", "type": "bool"},
]


async def _collection_loop(stack: Stack, reload: asyncio.Event, stop: asyncio.Event) -> None:
    """Read the desired services of a PocketBase collection (when a manifest names one).

    Every COLLECTION_POLL_S while that PocketBase is healthy; a change of the enabled
    records sets `reload`. While PocketBase is away the last records stay desired.
    """
    from nimsforest.stack._pocketbase import PocketBase, PocketBaseError

    client: PocketBase | None = None
    source = None
    problem: str | None = None
    try:
        while not stop.is_set():
            try:
                found = stack.desired.collection_source()
                records: RecordSet | None = RecordSet()
                if found is not None:
                    name, wanted = found
                    runner = stack.runner(name)
                    records = None  # unknown this round: keep what is desired
                    if runner is not None and runner.meets(Condition.HEALTHY):
                        if client is None or source != wanted:
                            if client is not None:
                                await client.aclose()
                            client, source = PocketBase(wanted.url, wanted.email, wanted.password), wanted
                        coll = wanted.collection
                        await client.ensure_collection(coll, _COLLECTION_FIELDS, [
                            f"CREATE UNIQUE INDEX idx_{coll}_name ON {coll} (name)"])
                        records = RecordSet(coll, {
                            str(r.get("name")): json.dumps(r.get("manifest"), sort_keys=True)
                            for r in await client.records(coll) if r.get("enabled")})
                if records is not None and records != stack.records:
                    log.info("The PocketBase collection %s changed: services %s",
                             records.collection or stack.records.collection,
                             ", ".join(sorted(records.manifests)) or "none")
                    stack.records = records
                    reload.set()
                if problem is not None:
                    log.info("Reading the desired services from PocketBase works again")
                problem = None
            except (PocketBaseError, ValueError) as exc:
                text = str(exc) or type(exc).__name__
                if text != problem:
                    log.warning("Cannot read the desired services from PocketBase: %s", text)
                problem = text
            with contextlib.suppress(TimeoutError):  # not wait_for: it can swallow a cancel
                async with asyncio.timeout(COLLECTION_POLL_S):
                    await stop.wait()
    finally:
        if client is not None:
            await client.aclose()
