"""Pipelined JetStream publishing: publish now, get the publish ack later as a future.

nats-py 2.16's `publish_async` never completes a future whose publish the server refuses
(its reply handler raises instead of setting the exception: `APIError.from_error` always
raises), so a refused publish (a lost compare-and-set, a full stream) would hang its
event and leak a pending slot. This small replacement completes every future: with a
PubAck, with the server's APIError, or with NoStreamResponseError. Timeouts are the
caller's (the consumer watchdog sets them). Pending publishes are bounded by the callers
(each consumer has at most `max_inflight` events in flight), so there is no cap here.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import TYPE_CHECKING, Any

from nats.js.api import PubAck
from nats.js.errors import APIError, NoStreamResponseError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg


class Publisher:
    SWEEP_EVERY = 10_000

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix = ""
        self._sub: Any = None
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[PubAck]] = {}
        self._lock = asyncio.Lock()

    async def _ensure(self) -> None:
        if self._sub is None:
            async with self._lock:
                if self._sub is None:
                    prefix = self._nc.new_inbox()
                    self._sub = await self._nc.subscribe(prefix + ".*", cb=self._on_reply)
                    self._prefix = prefix + "."

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> asyncio.Future[PubAck]:
        """Send now; the returned future resolves when JetStream has stored the message."""
        if self._sub is None:
            await self._ensure()
        n = next(self._ids)
        if n % self.SWEEP_EVERY == 0:  # drop futures completed by someone else (timeouts)
            for t in [t for t, f in self._pending.items() if f.done()]:
                del self._pending[t]
        token = str(n)
        fut: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._pending[token] = fut
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            self._pending.pop(token, None)
            raise
        return fut

    async def _on_reply(self, msg: Msg) -> None:
        fut = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if fut is None or fut.done():
            return
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            fut.set_exception(NoStreamResponseError())
            return
        try:
            resp = json.loads(msg.data)
            if "error" in resp:
                err = resp["error"]
                fut.set_exception(
                    APIError(
                        code=err.get("code"),
                        err_code=err.get("err_code"),
                        description=err.get("description"),
                    )
                )
            else:
                fut.set_result(PubAck.from_response(resp))
        except (ValueError, TypeError, KeyError) as exc:
            fut.set_exception(APIError(description=f"unreadable publish ack: {exc}"))

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: BLE001, S110 - connection may be closed
                pass
            self._sub = None
        for fut in list(self._pending.values()):
            if not fut.done():
                fut.cancel()
        self._pending.clear()


__all__ = ["Publisher"]
