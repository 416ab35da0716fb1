"""`nimsforest grow` against a real nats-server (with --nodes), idle and under synthetic load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import PlainNats
from tests.grow.support import Load, grow_cli, grow_json_until, schema_errors, state_file
from tests.support import free_port

LOW = "2"  # percent: an idle nats-server shows 0, one publisher makes it show far more


def mon(server: PlainNats) -> str:
    return f"http://127.0.0.1:{server.monitor_port}"


def test_idle_json_follows_the_schema_and_an_unreachable_node_is_a_row(plain_nats: PlainNats,
                                                                       tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    r = grow_cli("--nodes", f"{mon(plain_nats)},{dead}", "--json", "--state", state_file(tmp_path))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert schema_errors(doc) == []
    assert doc["schema"] == "nimsforest.grow/v1"
    assert doc["forest"]["source"] == "nodes"
    up, down = doc["nodes"]
    assert up["reachable"] and up["healthy"] and up["memory_bytes"] > 0 and up["memory_percent"] is None
    assert up["name"] != mon(plain_nats)  # named by its /varz server_name
    assert not down["reachable"] and down["error"].startswith("unreachable") and down["name"] == dead
    s = doc["summary"]
    assert (s["nodes_total"], s["nodes_reachable"], s["nodes_healthy"]) == (2, 1, 1)
    assert doc["decision"]["verdict"] == "within_limits" and doc["action"]["status"] == "none"
    assert doc["limits"] == {"threshold": 80.0, "max_nodes": 10, "cooldown_seconds": 900.0,
                             "last_expansion_at": None, "next_expansion_at": None}


def test_text_output(plain_nats: PlainNats, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    r = grow_cli("--nodes", f"{mon(plain_nats)},{dead}", "--state", state_file(tmp_path))
    assert r.returncode == 0, r.stderr
    for text in ("🌲 Forest: nodes given with --nodes", "NATS Cluster:", "Nodes: 1/2 healthy (1 unreachable)",
                 "Connections:", "Messages:", "Resource Usage (busiest node):", "CPU:", "Nodes:", "❌ unreachable",
                 "not compared with the threshold", "no expansion needed"):
        assert text in r.stdout, text


def test_no_node_answering_is_exit_1(tmp_path: Path) -> None:
    r = grow_cli("--nodes", f"127.0.0.1:{free_port()}", "--json", "--state", state_file(tmp_path))
    assert r.returncode == 1
    assert json.loads(r.stdout)["decision"]["verdict"] == "unknown"


async def test_under_load_auto_acts_before_printing_json_then_cooldown(plain_nats: PlainNats, load: Load,
                                                                      tmp_path: Path) -> None:
    marker = tmp_path / "created"
    command = f"sh -c 'echo {{name}} >> {marker}'"
    load.start(plain_nats.url)
    state = state_file(tmp_path)
    args = ("--nodes", mon(plain_nats), "--threshold", LOW, "--auto", "--provisioner", "command",
            "--command", command, "--state", state)
    r, doc = await grow_json_until("grow", *args, "--cooldown", "10m")
    assert r.returncode == 0, r.stderr
    assert schema_errors(doc) == []
    assert doc["action"] == {"mode": "auto", "status": "provisioned", "provisioner": "command", "node": "node-2",
                             "detail": "The command sh requested node node-2 (it joins once its machine has booted)."}
    assert marker.read_text() == "node-2\n"  # acted, and only then printed
    assert doc["nodes"][0]["over_threshold"] == ["cpu"]

    # Within the cooldown (remembered: no --cooldown this time): due, but blocked; nothing runs.
    r, doc = await grow_json_until("blocked", *args)
    assert r.returncode == 0
    assert doc["decision"]["blocked_by"] == ["cooldown"] and doc["action"]["status"] == "blocked"
    assert doc["limits"]["cooldown_seconds"] == 600 and doc["limits"]["next_expansion_at"]
    assert marker.read_text() == "node-2\n"
    text = grow_cli(*args).stdout
    assert "but not now: the last expansion was" in text

    # max_nodes: a forest of 1 with --max-nodes 1 never grows (fresh state: no cooldown).
    r, doc = await grow_json_until("blocked", *args[:-1], state_file(tmp_path, "other.json"), "--max-nodes", "1")
    assert doc["decision"]["blocked_by"] == ["max_nodes"]
    assert marker.read_text() == "node-2\n"


async def test_a_failed_expansion_is_exit_1_and_starts_the_cooldown(plain_nats: PlainNats, load: Load,
                                                                   tmp_path: Path) -> None:
    load.start(plain_nats.url)
    args = ("--nodes", mon(plain_nats), "--threshold", LOW, "--auto", "--provisioner", "command",
            "--command", "sh -c 'echo no quota left; exit 3'", "--state", state_file(tmp_path))
    r, doc = await grow_json_until("grow", *args)
    assert r.returncode == 1
    assert doc["action"]["status"] == "failed" and doc["action"]["detail"].endswith("code 3: no quota left.")
    r, doc = await grow_json_until("blocked", *args)
    assert r.returncode == 0 and doc["decision"]["blocked_by"] == ["cooldown"]
    text = grow_cli(*args[:-1], state_file(tmp_path, "text.json"), "--cooldown", "0")
    if "Suggestion: Add 1 node" in text.stdout:  # still under load when it measured
        assert text.returncode == 1 and "❌ Expansion failed: The command sh exited with code 3" in text.stdout


async def test_interactive_asks_and_respects_the_answer(plain_nats: PlainNats, load: Load, tmp_path: Path) -> None:
    marker = tmp_path / "created"
    load.start(plain_nats.url)
    base = ("--nodes", mon(plain_nats), "--threshold", LOW, "--provisioner", "command",
            "--command", f"sh -c 'echo {{name}} >> {marker}'", "--cooldown", "0", "--state", state_file(tmp_path))
    await grow_json_until("grow", *base, "--dry-run")  # the load shows

    answers = {}
    for answer in ("n", "", "y"):  # no, end of input, yes
        for _ in range(20):
            r = grow_cli(*base, input=answer + "\n" if answer else "")
            if "Suggestion: Add 1 node" in r.stdout:
                answers[answer] = r
                break
    assert set(answers) == {"n", "", "y"}
    assert "Add 1 node to the forest? [y/N]" in answers["n"].stdout
    assert "Not adding a node." in answers["n"].stdout and "Not adding a node." in answers[""].stdout
    assert answers["y"].returncode == 0 and "🌱 The command sh requested node node-2" in answers["y"].stdout
    assert marker.read_text() == "node-2\n"  # only the yes added one


async def test_dry_run_says_what_it_would_do(plain_nats: PlainNats, load: Load, tmp_path: Path) -> None:
    load.start(plain_nats.url)
    state = state_file(tmp_path)
    r, doc = await grow_json_until("grow", "--nodes", mon(plain_nats), "--threshold", LOW, "--dry-run", "--auto",
                                   "--provisioner", "command", "--command", "false", "--state", state)
    assert r.returncode == 0
    assert doc["action"]["status"] == "dry_run" and doc["action"]["detail"] == (
        "Dry run: would add node node-2 with the command provisioner.")
    assert not Path(state).exists()  # nothing recorded: no cooldown from a dry run


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "Say where the forest is"),
        (["--nodes", "ftp://x:1"], "--nodes"),
        (["--nodes", "127.0.0.1:8222", "--threshold", "0"], "--threshold"),
        (["--nodes", "127.0.0.1:8222", "--cooldown", "soon"], "--cooldown"),
        (["--nodes", "127.0.0.1:8222", "--provisioner", "cloudy"], "Unknown provisioner"),
        (["--nodes", "127.0.0.1:8222", "--provisioner", "command"], "needs --command"),
        (["--nodes", "127.0.0.1:8222", "--provisioner", "command", "--command", "x {nme}"], "placeholder"),
        (["--nodes", "127.0.0.1:8222", "-o", "novalue"], "KEY=VALUE"),
        (["--nodes", "127.0.0.1:8222", "--max-nodes", "0"], "--max-nodes"),
    ],
)
def test_usage_errors_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    r = grow_cli(*args, "--state", state_file(tmp_path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr


def test_help_documents_exit_codes() -> None:
    r = grow_cli("--help")
    assert r.returncode == 0 and "Exit codes: 0" in r.stdout
