"""nimsforest.cli.verify (the setup script's last step) against a real node."""

from __future__ import annotations

from pathlib import Path

from tests.deploy.conftest import verify
from tests.support import NodeProcess, free_port


async def test_verify_against_a_standalone_node(tmp_path: Path) -> None:
    node = NodeProcess("standalone", tmp_path / "n1" / "data", name="v1").start()
    try:
        await node.wait_healthy()
        api = f"127.0.0.1:{node.api_port}"
        ok = verify("--api", api, "--min-size", "1", "--timeout", "30s")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith("Verified: node v1 is in a cluster of 1")
        short = verify("--api", api, "--min-size", "2", "--timeout", "0s")
        assert short.returncode == 1
        assert "waiting for 2" in short.stderr and len(short.stderr.strip().splitlines()) == 1
    finally:
        node.stop()


def test_nothing_listening_is_a_failure_and_bad_options_are_usage_errors() -> None:
    r = verify("--api", f"127.0.0.1:{free_port()}", "--timeout", "0s")
    assert r.returncode == 1 and "no answer yet" in r.stderr
    assert verify("--timeout", "soon").returncode == 2
    assert verify("--mode", "both").returncode == 2
