"""The Soil mirror: every key of the node's KV bucket SOIL as a record in PocketBase.

One way (Soil -> PocketBase), run by the stack as its `soil-mirror` service
(`nimsforest stack mirror`). It watches SOIL with nats-py (`watchall`: the last value of
every key, then each change) and writes PocketBase through its REST API as a superuser:

- each key is one record of the collection (default `soil`) with fields `key`, `value`
  (the bytes as text), `json` (the value when it is JSON, else null) and `revision`;
- the record id is derived from the key (15 characters of [a-z0-9], PocketBase's id
  rule), so a put is PATCH-or-create and a delete is DELETE, without a lookup;
- after the initial values, records of keys no longer in Soil are deleted;
- the collection is created (superusers only) when missing.

Once the first pass is done it creates MIRROR_READY_FILE (the service's readiness). It
keeps going through errors: a lost NATS or PocketBase is one log line, then it starts
over with a fresh watch (which re-reads every key), so nothing is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js.kv import KV_DEL, KV_PURGE
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from natsembed import load_or_create
from natsembed.errors import reason
from nimsforest import natsclient
from nimsforest.stack._pocketbase import PocketBase

log = logging.getLogger("nimsforest.stack.mirror")

SOIL_BUCKET = "SOIL"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_TEXT_MAX = 1_000_000


class MirrorSettings(BaseSettings):
    """The mirror's settings, from the environment the stack gives it."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    nats_url: str = Field("nats://127.0.0.1:4222", validation_alias="MIRROR_NATS_URL")
    node_data_dir: Path = Field(Path(".data/node"), validation_alias="MIRROR_NODE_DATA_DIR")
    cluster_secret: SecretStr | None = Field(None, validation_alias="NATS_CLUSTER_SECRET")
    pocketbase_url: str = Field("http://127.0.0.1:8090", validation_alias="MIRROR_POCKETBASE_URL")
    collection: str = Field("soil", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                            validation_alias="MIRROR_COLLECTION")
    ready_file: Path | None = Field(None, validation_alias="MIRROR_READY_FILE")
    admin_email: str = Field("admin@example.com", validation_alias="POCKETBASE_ADMIN_EMAIL")
    admin_password: SecretStr = Field(validation_alias="POCKETBASE_ADMIN_PASSWORD")

    @classmethod
    def from_environment(cls, **overrides: Any) -> MirrorSettings:
        """Every field from the environment; raises ValidationError when one is missing."""
        return cls(**overrides)


def record_id(key: str) -> str:
    """The PocketBase record id of Soil key `key`: 15 characters of [a-z0-9]."""
    n = int.from_bytes(hashlib.sha256(key.encode()).digest(), "big")
    out = []
    for _ in range(15):
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return "".join(out)


def record_body(key: str, value: bytes, revision: int) -> dict[str, Any]:
    text = value.decode(errors="replace")
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        parsed = None
    return {"key": key, "value": text, "json": parsed, "revision": revision}


class SoilCollection:
    """The mirror's collection in PocketBase: one record per Soil key."""

    def __init__(self, pb: PocketBase, name: str) -> None:
        self.pb = pb
        self.name = name

    async def ensure(self) -> None:
        await self.pb.ensure_collection(self.name, [
            {"name": "key", "type": "text", "required": True, "max": 4096},
            {"name": "value", "type": "text", "max": _TEXT_MAX},
            {"name": "json", "type": "json", "maxSize": _TEXT_MAX},
            {"name": "revision", "type": "number", "onlyInt": True},
        ], [f"CREATE UNIQUE INDEX idx_{self.name}_key ON {self.name} (key)"])

    def _records(self) -> str:
        return f"/api/collections/{self.name}/records"

    async def put(self, key: str, value: bytes, revision: int) -> None:
        rid = record_id(key)
        body = record_body(key, value, revision)
        resp = await self.pb.request("PATCH", f"{self._records()}/{rid}", json=body)
        if resp.status_code == 404:
            resp = await self.pb.request("POST", self._records(), json={"id": rid, **body})
        if resp.status_code not in (200, 201):
            raise self.pb.refused(f"store key {key}", resp)

    async def delete(self, key: str) -> None:
        resp = await self.pb.request("DELETE", f"{self._records()}/{record_id(key)}")
        if resp.status_code not in (200, 204, 404):
            raise self.pb.refused(f"delete key {key}", resp)

    async def keys(self) -> set[str]:
        return {str(r["key"]) for r in await self.pb.records(self.name, fields="key")}


class SoilMirror:
    """Soil -> PocketBase, until cancelled."""

    def __init__(self, settings: MirrorSettings) -> None:
        self.settings = settings
        self._problem: str | None = None

    def _trouble(self, text: str) -> None:
        if text != self._problem:
            log.warning("Soil mirror: %s; trying again", text)
            self._problem = text

    async def run(self) -> None:
        ready = self.settings.ready_file
        if ready is not None:
            ready.unlink(missing_ok=True)
        pb = PocketBase(self.settings.pocketbase_url, self.settings.admin_email,
                        self.settings.admin_password.get_secret_value())
        soil = SoilCollection(pb, self.settings.collection)
        try:
            while True:
                try:
                    await self._mirror(soil)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - keep mirroring through errors
                    self._trouble(reason(exc))
                    await asyncio.sleep(1.0)
        finally:
            await pb.aclose()
            if ready is not None:
                ready.unlink(missing_ok=True)

    async def _connect(self) -> Client:
        creds = load_or_create(self.settings.node_data_dir).with_cluster_secret(
            self.settings.cluster_secret.get_secret_value() if self.settings.cluster_secret else None
        )
        lost = False

        async def error_cb(exc: Exception) -> None:  # nats-py's default prints a traceback
            nonlocal lost
            if not lost:
                log.warning("Soil mirror lost NATS (%s); reconnecting", reason(exc))
            lost = True

        async def reconnected_cb() -> None:
            nonlocal lost
            if lost:
                log.info("Soil mirror reconnected to NATS")
            lost = False

        return await natsclient.connect(self.settings.nats_url, user=creds.app_user,
                                        password=creds.app_password, name="soil-mirror",
                                        max_reconnect_attempts=-1, connect_timeout=2,
                                        error_cb=error_cb, reconnected_cb=reconnected_cb)

    async def _mirror(self, pb: SoilCollection) -> None:
        nc = await self._connect()
        try:
            kv = await nc.jetstream().key_value(SOIL_BUCKET)
            await pb.ensure()
            watcher = await kv.watchall()
            seen: set[str] = set()
            initial = True
            try:
                async for entry in watcher:
                    if entry is None:  # the initial values are all in
                        if initial:
                            for stale in await pb.keys() - seen:
                                await pb.delete(stale)
                            initial = False
                            self._mark_ready(len(seen))
                        continue
                    if entry.operation in (KV_DEL, KV_PURGE):
                        seen.discard(entry.key)
                        await pb.delete(entry.key)
                    else:
                        seen.add(entry.key)
                        await pb.put(entry.key, entry.value or b"", entry.revision or 0)
            finally:
                stop: Callable[[], Awaitable[None]] = watcher.stop  # nats-py is untyped
                with contextlib.suppress(Exception):
                    await stop()
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    def _mark_ready(self, count: int) -> None:
        if self._problem is not None:
            log.info("Soil mirror is in step again")
        else:
            log.info("Soil mirror is in step (%d keys); following changes", count)
        self._problem = None
        if self.settings.ready_file is not None:
            self.settings.ready_file.parent.mkdir(parents=True, exist_ok=True)
            self.settings.ready_file.touch()


async def run_mirror(settings: MirrorSettings) -> None:
    """Run the mirror until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(SoilMirror(settings).run())
        await stop.wait()
        task.cancel()
