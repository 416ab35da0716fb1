"""The FOREST KV bucket: the cluster's desired set of components, one key per component.

Contract:
- `open()` creates the bucket when missing through `ensure_stream` (the node's replicas
  and placement tags; an existing bucket's replication is the cluster manager's, which
  keeps it at min(cluster size, 3)) and is idempotent; the controller retries it while
  JetStream settles.
- `create`, `update` and `delete` are compare-and-set on the key's revision: a write
  based on a stale revision raises `Conflict` and changes nothing, so two concurrent
  changes can never silently overwrite each other.
- `snapshot()` returns every live entry with its revision and the bucket's last
  revision, as one consistent view (the initial values of a watch).
- `watch()` delivers the current values, then every change, in revision order.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.js.errors import (
    APIError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)

from nimsforest.control._desired import DesiredComponent, entry_key
from nimsforest.control.errors import Conflict
from nimsforest.streams import NODE_TAG, ensure_stream, kv_spec

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

    from nimsforest.forest import ComponentKind

BUCKET = "FOREST"
WRITE_ATTEMPTS = 3  # sends of one write whose answer was lost
SPEC = kv_spec(BUCKET, history=5, description="NimsForest desired components (control plane)")


@dataclass(frozen=True)
class Stored:
    entry: DesiredComponent
    revision: int


@dataclass(frozen=True)
class Snapshot:
    entries: dict[str, Stored]
    revision: int  # the last revision seen (0: the bucket was never written)


class DesiredStore:
    def __init__(
        self,
        nc: Client,
        *,
        replicas: int = 1,
        placement_tags: tuple[str, ...] | None = (NODE_TAG,),
    ) -> None:
        self._js = nc.jetstream()
        self._replicas, self._tags = replicas, placement_tags
        self._kv: KeyValue | None = None

    async def open(self) -> None:
        await ensure_stream(self._js, SPEC, self._replicas, self._tags, rescale=False)
        self._kv = await self._js.key_value(BUCKET)

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "DesiredStore.open() first"
        return self._kv

    async def last_revision(self) -> int:
        """The bucket's last sequence: every write and delete raises it."""
        info = await self._js.stream_info(SPEC.name)
        return int(info.state.last_seq)

    async def get(self, kind: ComponentKind, name: str) -> Stored | None:
        try:
            e = await self.kv.get(entry_key(kind, name))
        except (KeyNotFoundError, NotFoundError):
            return None
        if e.value is None:
            return None
        return Stored(DesiredComponent.decode(e.value), int(e.revision or 0))

    async def snapshot(self, timeout: float = 10.0) -> Snapshot:
        w = await self.kv.watchall()
        try:
            entries: dict[str, Stored] = {}
            revision = 0
            while True:
                e = await w.updates(timeout=timeout)
                if e is None:
                    break
                revision = max(revision, int(e.revision or 0))
                apply_update(entries, e)
            return Snapshot(entries, max(revision, await self.last_revision()))
        finally:
            await w.stop()

    async def watch(self) -> Any:
        """A nats-py KeyWatcher over every key (current values first, then a None
        marker, then each change)."""
        return await self.kv.watchall()

    async def create(self, entry: DesiredComponent) -> int:
        try:
            return await self._write(entry.key, entry.encode(), 0)
        except KeyWrongLastSequenceError:
            # a removed component leaves a delete marker: it may be created again on it
            last = await self._last(entry.key)
            if last is None or _operation(last) is None:
                raise Conflict(f"{entry.label} already exists.") from None
        try:
            return await self._write(entry.key, entry.encode(), int(last.seq or 0))
        except KeyWrongLastSequenceError:
            raise Conflict(f"{entry.label} already exists.") from None

    async def update(self, entry: DesiredComponent, revision: int) -> int:
        try:
            return await self._write(entry.key, entry.encode(), revision)
        except KeyWrongLastSequenceError:
            raise Conflict(
                f"{entry.label} was changed by someone else meanwhile; look again and retry."
            ) from None

    async def delete(self, stored: Stored) -> int:
        """Delete at the stored revision; returns the revision of the delete marker."""
        try:
            return await self._write(stored.entry.key, b"", stored.revision, delete=True)
        except KeyWrongLastSequenceError:
            raise Conflict(
                f"{stored.entry.label} was changed by someone else meanwhile; look again and retry."
            ) from None

    async def _write(self, key: str, payload: bytes, revision: int, *, delete: bool = False) -> int:
        """Compare-and-set `key` at `revision` (0: the key has never been written); the
        revision written. Raises KeyWrongLastSequenceError when someone else wrote first.

        An unanswered write is looked up before it is sent again: a lost answer is not a
        lost write (a stream re-forming its replicas after a node joined or left may drop
        the answer), and the compare-and-set makes a second copy impossible."""
        subject = f"$KV.{BUCKET}.{key}"
        headers = {"Nats-Expected-Last-Subject-Sequence": str(revision)}
        if delete:  # nats-py's kv.delete neither returns the revision nor maps a lost race
            headers["KV-Operation"] = "DEL"
        unanswered = False
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                ack = await self._js.publish(subject, payload, headers=headers)
                return int(ack.seq)
            except APIError as err:
                if err.err_code not in (10071, 10164):
                    raise
                if unanswered and (seq := await self._landed(key, payload, revision, delete)):
                    return seq  # the unanswered attempt was stored after all
                raise KeyWrongLastSequenceError(description=err.description) from None
            except nats.errors.TimeoutError:
                if attempt == WRITE_ATTEMPTS:
                    raise
                unanswered = True
                with contextlib.suppress(nats.errors.TimeoutError):
                    if seq := await self._landed(key, payload, revision, delete):
                        return seq
        raise AssertionError("unreachable")

    async def _last(self, key: str) -> Any:
        """The last message on `key` (a value or a delete marker), or None."""
        try:
            return await self._js.get_last_msg(SPEC.name, f"$KV.{BUCKET}.{key}")
        except NotFoundError:
            return None

    async def _landed(self, key: str, payload: bytes, revision: int, delete: bool) -> int | None:
        """The revision of our write to `key` after `revision` if it was stored, else None."""
        last = await self._last(key)
        if last is None or int(last.seq or 0) <= revision:
            return None
        op = _operation(last)
        ours = op == "DEL" if delete else op is None and (last.data or b"") == payload
        return int(last.seq or 0) if ours else None

    async def put_back(self, key: str, previous: Stored | None, written: int) -> None:
        """Undo one write of ours (revision `written`): restore `previous`, or delete the
        key when there was none. Best effort: a later write by someone else wins."""
        try:
            if previous is None:
                await self._write(key, b"", written, delete=True)
            else:
                await self._write(key, previous.entry.encode(), written)
        except (TimeoutError, KeyWrongLastSequenceError, Exception):  # noqa: BLE001
            pass


def _operation(msg: Any) -> str | None:
    """A KV message's operation: "DEL" or "PURGE" for markers, None for a value."""
    return (msg.headers or {}).get("KV-Operation")


def apply_update(entries: dict[str, Stored], e: Any) -> None:
    """Fold one KV watch entry into `entries` (a put replaces, a delete/purge removes).
    A value that is not a desired entry (written by hand) is ignored."""
    if e.operation in ("DEL", "PURGE") or not e.value:
        entries.pop(e.key, None)
        return
    try:
        entries[e.key] = Stored(DesiredComponent.decode(e.value), int(e.revision or 0))
    except ValueError:
        entries.pop(e.key, None)


__all__ = ["BUCKET", "SPEC", "DesiredStore", "Snapshot", "Stored", "apply_update"]
