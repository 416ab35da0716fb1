"""Dockerfile and docker-compose.yml: structural checks (docker itself does not run here),
plus the image's HEALTHCHECK command run against a real node, and the wheel's package data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from nimsforest.cli.registry import serve
from nimsforest.settings import Settings, env_name, parse_hostport
from tests.deploy.conftest import ROOT
from tests.support import NodeProcess, RegistryProcess, eventually, free_port

SETTINGS_VARS = {env_name(f) for f in Settings.model_fields}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def one(name: str) -> str:
    found = [args for word, args in instructions() if word == name]
    assert len(found) == 1, (name, found)
    return found[0]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in instructions():
        if word == "ENV":
            env.update(dict(pair.split("=", 1) for pair in args.split()))
    return env


def test_dockerfile_is_coherent() -> None:
    assert one("FROM") == "python:3.11-slim"
    assert json.loads(one("CMD")) == ["nimsforest"]  # the production daemon, settings from the environment
    assert one("USER") not in ("root", "0")
    exposed = {int(p) for p in one("EXPOSE").split()}
    assert exposed == {4222, 6222, 8222, 8080}
    env = image_env()
    assert {k for k in env if not k.startswith(("PYTHON", "PIP_"))} <= SETTINGS_VARS
    api_port = parse_hostport(env["NIMSFOREST_API"])[1]
    assert api_port in exposed
    assert json.loads(one("VOLUME")) == [env["NATS_DATA_DIR"]]
    for word, args in instructions():
        if word == "COPY":
            source = args.split()[0]
            assert (ROOT / source).exists(), source
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def healthcheck_command() -> list[str]:
    args = one("HEALTHCHECK")
    assert "--start-period=" in args
    return json.loads(args[args.index("CMD") + 3:].strip())


async def test_healthcheck_command_probes_a_real_node(tmp_path: Path) -> None:
    cmd = healthcheck_command()
    assert cmd[0] == "python"
    cmd[0] = sys.executable
    node = NodeProcess("standalone", tmp_path / "n1" / "data", name="h1").start()
    try:
        await node.wait_healthy()
        env = {"PATH": "/usr/bin:/bin", "NIMSFOREST_API": f"0.0.0.0:{node.api_port}"}
        up = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)
        assert up.returncode == 0, up.stderr
    finally:
        node.stop()
    down = subprocess.run(cmd, env={"NIMSFOREST_API": f"0.0.0.0:{free_port()}"}, capture_output=True, timeout=30,
                          check=False)
    assert down.returncode != 0


async def test_registry_healthcheck_probes_a_real_registry_with_its_token(tmp_path: Path) -> None:
    registry = compose()["services"]["registry"]
    assert registry["environment"]["REGISTRY_TOKEN"].startswith("${REGISTRY_TOKEN:?")
    cmd = list(registry["healthcheck"]["test"][1:])  # ["CMD", "python", "-c", ...]
    assert cmd[0] == "python"
    cmd[0] = sys.executable
    server = RegistryProcess(tmp_path / "reg", env={"REGISTRY_TOKEN": "t0ken"}).start()
    cmd[-1] = cmd[-1].replace("8500", str(server.port))
    try:
        def probe(token: str) -> int:
            return subprocess.run(cmd, env={**os.environ, "REGISTRY_TOKEN": token}, capture_output=True,
                                  timeout=30, check=False).returncode

        await eventually(lambda: probe("t0ken") == 0, what="registry healthy with its token")
        assert probe("wrong") != 0
    finally:
        server.stop()


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_a_registry_and_three_nodes() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"registry", "n1", "n2", "n3"}
    registry = services["registry"]
    assert registry["command"][:3] == ["nimsforest", "registry", "serve"]
    port = registry["command"][registry["command"].index("--port") + 1]
    assert str(port) in " ".join(registry["healthcheck"]["test"])
    registry_vars = {p.envvar for p in serve.params if getattr(p, "envvar", None)}
    assert set(registry.get("environment") or {}) <= registry_vars

    names = set()
    for name in ("n1", "n2", "n3"):
        node = services[name]
        env = node["environment"]
        assert set(env) <= SETTINGS_VARS, set(env) - SETTINGS_VARS  # no typo'd variable
        assert env["NATS_NODE_NAME"] == name == node["hostname"] == env["NATS_ADVERTISE_ADDRESS"]
        names.add(env["NATS_NODE_NAME"])
        assert env["REGISTRY_URL"] == f"http://registry:{port}"
        assert env["NATS_BIND_ADDRESS"] == "0.0.0.0"
        assert parse_hostport(env["NIMSFOREST_API"])[0] == "0.0.0.0"
        # secrets come from the caller's environment, required, never written in the file
        for secret in ("NATS_CLUSTER_SECRET", "NIMSFOREST_API_TOKEN", "REGISTRY_TOKEN"):
            assert re.fullmatch(r"\$\{" + secret + r":\?[^}]+\}", env[secret]), env[secret]
        assert node["volumes"] == [f"{name}-data:{image_env()['NATS_DATA_DIR']}"]
        assert node["depends_on"]["registry"]["condition"] == "service_healthy"
        assert int(node["stop_grace_period"].rstrip("s")) >= 60
        assert node["image"] == registry["image"] and node["build"] == "."
    assert names == {"n1", "n2", "n3"}
    assert set(doc["volumes"]) == {"registry-data", "n1-data", "n2-data", "n3-data"}


def test_the_wheel_carries_the_templates(tmp_path: Path) -> None:
    """What pip installs (Dockerfile, setup script, cloud-init) includes the unit and nats.conf templates."""
    src = tmp_path / "src"  # a copy: building in place would leave build/ in the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                            "tests", ".*cache", ".nimsforest"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(src)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(tmp_path.glob("nimsforest-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for unit in ("nimsforest.service.j2", "nats.service.j2", "nimsforest-sidecar.service.j2", "_hardening.j2"):
        assert f"nimsforest/deploy/templates/{unit}" in names, unit
    assert "natsembed/templates/nats.conf.j2" in names
