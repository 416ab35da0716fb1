"""Leaderships a server holds, and asking it to hand every one of them over (a drain).

Reads the server's own /jsz (accounts, streams, consumers): the meta group, each stream
and each consumer whose leader it is. Step-downs go through the JetStream API with a
preferred successor where the API takes one:

    $JS.API.META.LEADER.STEPDOWN                       (system account)
    $JS.API.STREAM.LEADER.STEPDOWN.<stream>            (application account)
    $JS.API.CONSUMER.LEADER.STEPDOWN.<stream>.<name>   (application account)

A stream or consumer with one replica cannot step down: it has no other copy to lead
(it must be moved first); those are reported, never asked.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from natsembed._supervisor import is_witness
from natsembed.errors import NatsEmbedError, reason

if TYPE_CHECKING:
    from natsembed._monitor import Jsz
    from natsembed._supervisor import EmbeddedNats

log = logging.getLogger("natsembed")


@dataclass(frozen=True)
class Led:
    """A stream or consumer this server leads."""

    stream: str
    consumer: str | None  # None: the stream itself
    candidates: tuple[str, ...]  # current replicas on other servers, best first
    replicas: int  # servers holding it (the leader included)

    @property
    def successor(self) -> str | None:
        """The replica a step-down prefers."""
        return self.candidates[0] if self.candidates else None

    def __str__(self) -> str:
        return f"{self.stream}/{self.consumer}" if self.consumer else self.stream


@dataclass(frozen=True)
class Leaderships:
    server: str
    meta: bool  # the server leads the JetStream meta group
    meta_candidates: tuple[str, ...]  # current meta members elsewhere, best first
    led: tuple[Led, ...]

    @property
    def meta_successor(self) -> str | None:
        return self.meta_candidates[0] if self.meta_candidates else None

    @property
    def movable(self) -> tuple[Led, ...]:
        return tuple(x for x in self.led if x.replicas > 1)

    @property
    def single(self) -> tuple[Led, ...]:
        """Led assets with one replica: they stay until moved elsewhere."""
        return tuple(x for x in self.led if x.replicas <= 1)

    @property
    def none_left(self) -> bool:
        """Nothing that a step-down could hand over (single-replica assets aside)."""
        return not self.meta and not self.movable


def _candidates(cluster: Any, server: str) -> tuple[tuple[str, ...], int]:
    """(current replicas on other servers, least lag first; servers holding it)."""
    replicas = list((cluster or {}).get("replicas") or ())
    good = sorted(
        (r for r in replicas if r.get("current") and not r.get("offline") and r.get("name") != server),
        key=lambda r: (int(r.get("lag") or 0), str(r.get("name"))),
    )
    return tuple(str(r["name"]) for r in good), 1 + len(replicas)


def leaderships(server: str, jsz: Jsz) -> Leaderships:
    """What `server` leads, from its own /jsz with accounts, streams and consumers (pure)."""
    led: list[Led] = []
    for detail in jsz.stream_details():
        cluster = detail.cluster
        if cluster is not None and cluster.leader == server:
            good = tuple(r.name for r in cluster.replicas
                         if r.current and not r.offline and r.name != server)
            led.append(Led(detail.name, None, good, 1 + len(cluster.replicas)))
        for consumer in detail.consumer_detail:
            ccluster = consumer.get("cluster") or {}
            if ccluster.get("leader") == server:
                candidates, count = _candidates(ccluster, server)
                durable = bool((consumer.get("config") or {}).get("durable_name"))
                if count <= 1 and not durable:
                    continue  # a client's ephemeral consumer (a KV watch): it goes with its client
                led.append(Led(detail.name, str(consumer.get("name")), candidates, count))
    meta = jsz.meta_cluster
    is_meta = meta is not None and meta.leader == server
    meta_candidates: tuple[str, ...] = ()
    if meta is not None:
        members = [p.name for p in meta.replicas if p.current and not p.offline and p.name != server]
        # a witness may lead the meta group, but a node that can also lead streams is better
        meta_candidates = tuple(sorted(members, key=is_witness))
    return Leaderships(server, is_meta, meta_candidates, tuple(led))


async def held(embedded: EmbeddedNats) -> Leaderships:
    """What this node's nats-server leads right now."""
    jsz = await embedded.monitor.jsz(consumers=True)
    return leaderships(embedded.server_name, jsz)


async def step_down(embedded: EmbeddedNats, now: Leaderships) -> list[str]:
    """Ask for every step-down `now` calls for; returns the refusals, one sentence each."""
    from natsembed._system import SystemClient

    refused: list[str] = []
    c = embedded.credentials
    if now.movable:
        async with SystemClient(embedded.system_url, c.app_user, c.app_password) as app:
            for x in now.movable:
                body = {"placement": {"preferred": x.successor}} if x.successor else None
                subject = (
                    f"$JS.API.CONSUMER.LEADER.STEPDOWN.{x.stream}.{x.consumer}"
                    if x.consumer
                    else f"$JS.API.STREAM.LEADER.STEPDOWN.{x.stream}"
                )
                try:
                    await app.request(subject, body)
                except NatsEmbedError as exc:
                    refused.append(f"{x}: {reason(exc)}")
    if now.meta:
        async with embedded.system_client() as sysc:
            try:
                await sysc.meta_stepdown(preferred=now.meta_successor)
            except NatsEmbedError as exc:
                refused.append(f"meta group: {reason(exc)}")
    return refused


async def hand_over_leaderships(
    embedded: EmbeddedNats, timeout: float = 30.0, pause: float = 0.5
) -> Leaderships:
    """Step down every meta, stream and consumer leadership this node holds (with a
    preferred successor) and wait until it holds none; returns what it still holds when
    `timeout` runs out (single-replica assets are never handed over)."""
    deadline = time.monotonic() + timeout
    now = await held(embedded)
    while not now.none_left and time.monotonic() < deadline:
        for refusal in await step_down(embedded, now):
            log.debug("Step-down refused: %s", refusal)
        await asyncio.sleep(pause)
        now = await held(embedded)
    return now
