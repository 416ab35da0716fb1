"""Helpers of the grow tests: synthetic load (a separate process publishing through a real
nats-server), the grow CLI, its JSON schema. The `load` fixture is in tests/conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import eventually

LOAD_SCRIPT = r"""
import asyncio, sys
import nats

async def main(pub_url, sub_url):
    pub = await nats.connect(pub_url)
    sub = await nats.connect(sub_url)

    async def drop(msg):
        pass

    await sub.subscribe("grow.load.>", cb=drop)
    payload = b"x" * 1024
    while True:
        for _ in range(1000):
            await pub.publish("grow.load.burst", payload)
        await asyncio.sleep(0)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


class Load:
    """Publish bursts through `pub_url` to a subscriber on `sub_url` until stopped."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, pub_url: str, sub_url: str | None = None) -> None:
        self.procs.append(subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT, pub_url, sub_url or pub_url],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs.clear()


def grow_cli(*args: str, env: dict[str, str] | None = None, input: str | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("NATS_", "REGISTRY_", "NIMSFOREST_", "JETSTREAM_"))}
    return subprocess.run([sys.executable, "-m", "nimsforest", "grow", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, input=input, check=False)


async def grow_json_until(verdict: str, *args: str, env: dict[str, str] | None = None,
                          timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run `grow --json ARGS` until its decision is `verdict` (load takes a moment to show)."""
    last: list = []

    def attempt() -> bool:
        r = grow_cli("--json", *args, env=env)
        assert r.returncode in (0, 1), r.stderr
        doc = json.loads(r.stdout)
        last[:] = [r, doc]
        return doc["decision"]["verdict"] == verdict

    await eventually(attempt, timeout=timeout, interval=0.5, what=f"grow decides '{verdict}'")
    return last[0], last[1]


def schema_errors(doc: dict) -> list[str]:
    import jsonschema_rs

    from nimsforest.grow.model import json_schema

    validator = jsonschema_rs.validator_for(json_schema())
    return [str(e) for e in validator.iter_errors(doc)]


def state_file(tmp_path: Path, name: str = "grow.json") -> str:
    return str(tmp_path / "state" / name)
