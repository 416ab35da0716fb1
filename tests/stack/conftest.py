"""A real stack (the default manifests on free ports) in a temporary root, run as users run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from nimsforest.stack import DEFAULT_SERVICES
from tests.support import free_port

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "stack-test-password"


def copy_default_manifests(root: Path) -> dict[str, dict[str, int]]:
    """The default stack's manifests under root/services, every port a free one."""
    ports: dict[str, dict[str, int]] = {}
    for src in sorted(DEFAULT_SERVICES.glob("*/service.json")):
        manifest = json.loads(src.read_text())
        for port in manifest.get("ports", {}).values():
            port["port"] = free_port()
        ports[src.parent.name] = {n: p["port"] for n, p in manifest.get("ports", {}).items()}
        dest = root / "services" / src.parent.name / "service.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(manifest, indent=2))
    return ports


class StackRun:
    """`nimsforest stack ...` in one root; `stop()` always leaves nothing running."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = copy_default_manifests(root)
        (root / ".env").write_text(
            f"POCKETBASE_ADMIN_EMAIL={ADMIN_EMAIL}\nPOCKETBASE_ADMIN_PASSWORD={ADMIN_PASSWORD}\n"
        )
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("POCKETBASE_", "NIMSFOREST_DOMAIN"))}
        self.seen: list[psutil.Process] = []

    def cli(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "nimsforest", *args, "--root", str(self.root)],
                                check=False, env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
                                 f"\n{self.supervisor_log()}")
        return result

    def up(self) -> dict[str, Any]:
        self.cli("stack", "up", "--detach")
        status = self.status()
        self.remember()
        return status

    def first_followed_line(self) -> str:
        """The first line `stack logs -f` prints (then it is stopped)."""
        follow = subprocess.Popen([sys.executable, "-m", "nimsforest", "stack", "logs", "-f",
                                   "--root", str(self.root)], env=self.env, stdout=subprocess.PIPE,
                                  text=True)
        try:
            assert follow.stdout is not None
            return follow.stdout.readline()
        finally:
            follow.terminate()
            follow.wait(10)

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.cli("stack", "status", "--json").stdout))

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.status()["services"] if s["name"] == name)

    def service_names(self) -> list[str]:
        return [s["name"] for s in self.status()["services"]]

    def pids(self) -> dict[str, int | None]:
        return {s["name"]: s["pid"] for s in self.status()["services"]}

    def supervisor_pid(self) -> int:
        return int((self.root / ".nimsforest-stack" / "stack.pid").read_text())

    def remember(self) -> list[psutil.Process]:
        """The supervisor and every process under it, kept to check later that all are gone."""
        try:
            sup = psutil.Process(self.supervisor_pid())
            tree = [sup, *sup.children(recursive=True)]
        except (OSError, psutil.NoSuchProcess):
            tree = []
        self.seen += [p for p in tree if p.pid not in {s.pid for s in self.seen}]
        return tree

    def alive(self) -> list[psutil.Process]:
        out = []
        for p in self.seen:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out

    def supervisor_log(self) -> str:
        try:
            return (self.root / ".nimsforest-stack" / "supervisor.log").read_text()[-4000:]
        except OSError:
            return ""

    def https(self, path: str) -> Any:
        import ssl

        import httpx

        ca = self.root / ".data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        url = f"https://localhost:{self.ports['caddy']['https']}{path}"
        return httpx.get(url, verify=ssl.create_default_context(cafile=str(ca)), trust_env=False,
                         timeout=5)

    def stop(self) -> None:
        self.remember()
        self.cli("stack", "down", check=False)
        for p in self.alive():  # never leave anything behind, even when a test failed
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                p.kill()


@pytest.fixture
def stack_run(tmp_path: Path) -> Iterator[StackRun]:
    run = StackRun(tmp_path / "stack")
    try:
        yield run
    finally:
        run.stop()


StackFactory = Callable[[], StackRun]
