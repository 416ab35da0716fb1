"""The stack's HTTP half: probe checks (http_get, exec or tcp) and a live config POST.

The supervisor imports this module at the first probe, after the first services were
spawned (`Stack.prober`), so httpx is not on the path to the first spawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from nimsforest.stack._manifest import Probe


@dataclass(frozen=True)
class ConfigReply:
    """What a service's admin endpoint answered to a new config: its HTTP status and body,
    or (status None) why it could not be asked."""

    status: int | None
    text: str = ""
    unreachable: str = ""

    @property
    def applied(self) -> bool:
        return self.status is not None and self.status < 400


class Prober:
    """Runs checks and config POSTs; owns the HTTP clients (one per CA file) and closes them
    in `aclose`."""

    def __init__(self) -> None:
        self._clients: dict[str | None, httpx.AsyncClient] = {}

    def _client(self, ca_file: str | None) -> httpx.AsyncClient | None:
        client = self._clients.get(ca_file)
        if client is None:
            verify: ssl.SSLContext | bool = True
            if ca_file is not None:
                if not Path(ca_file).is_file():
                    return None  # the CA is not there yet (Caddy creates it on first start)
                verify = ssl.create_default_context(cafile=ca_file)
            client = httpx.AsyncClient(verify=verify, trust_env=False)
            self._clients[ca_file] = client
        return client

    async def check(self, probe: Probe) -> bool:
        try:
            return await asyncio.wait_for(self._check(probe), probe.timeout_seconds)
        except (TimeoutError, OSError, httpx.HTTPError, ssl.SSLError):
            return False

    async def _check(self, probe: Probe) -> bool:
        if probe.http_get is not None:
            client = self._client(probe.http_get.ca_file)
            if client is None:
                return False
            resp = await client.get(probe.http_get.url)
            return 200 <= resp.status_code < 400
        if probe.tcp is not None:
            _, writer = await asyncio.open_connection(probe.tcp.host, probe.tcp.port_number)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        assert probe.exec is not None
        proc = await asyncio.create_subprocess_exec(
            *probe.exec.command, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            return await proc.wait() == 0
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def post_config(self, url: str, text: str) -> ConfigReply:
        """POST a JSON config to a service's admin endpoint (Caddy's /load)."""
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
                resp = await client.post(url, content=text, headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            return ConfigReply(None, unreachable=type(exc).__name__)
        return ConfigReply(resp.status_code, resp.text.strip()[:300])

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
