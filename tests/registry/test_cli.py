"""`nimsforest registry ...` on the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner

from nimsforest.cli import main
from tests.registry.conftest import RegistryProcess
from tests.support import free_port


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["registry", "--help"], "serve"),
        (["registry", "serve", "--help"], "--data"),
        (["registry", "nodes", "--help"], "--registry-url"),
        (["registry", "metadata", "--help"], "KEY=VALUE"),
    ],
)
def test_help(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and needle in result.output


def test_nodes_lists_a_service(registry_server: RegistryProcess, service: str) -> None:
    httpx.post(
        f"{registry_server.url}/v1/services/{service}/nodes",
        json={"name": "cli-node", "cluster_address": "10.3.0.1:6222"},
    )
    args = [
        "registry",
        "nodes",
        "--registry-url",
        registry_server.url,
        "--registry-service",
        service,
    ]
    table = CliRunner().invoke(main, args, env={"REGISTRY_TOKEN": None})
    assert table.exit_code == 0 and "cli-node" in table.output and "10.3.0.1:6222" in table.output
    as_json = CliRunner().invoke(main, [*args, "--json"], env={"REGISTRY_TOKEN": None})
    assert [n["name"] for n in json.loads(as_json.output)] == ["cli-node"]


def test_nodes_against_a_dead_registry_is_one_sentence() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        main,
        ["registry", "nodes", "--registry-url", url, "--timeout", "0.5s"],
        env={"REGISTRY_TOKEN": None},
    )
    assert result.exit_code == 1
    assert f"Error: Registry unreachable at {url}: cannot connect" in result.output


def test_serve_refuses_a_port_in_use(registry_server: RegistryProcess, tmp_path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nimsforest",
            "registry",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(registry_server.port),
            "--data",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "address already in use" in proc.stderr.lower()
