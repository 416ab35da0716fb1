"""Helpers shared by tests (not fixtures)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def eventually(
    check: Callable[[], Awaitable[T]] | Callable[[], T],
    timeout: float = 20.0,
    interval: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll `check` until it returns a truthy value; fail the test after `timeout`.

    This waits for behaviour; it never asserts how long something took.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
        except Exception as exc:  # noqa: BLE001 - reported below if it persists
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {last_exc!r}" if last_exc else ""))
        await asyncio.sleep(interval)
