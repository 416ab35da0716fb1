"""NodeInfo validation, the timing rule, open_registry's checks, the peer cache, node ids."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from registry import (
    NodeInfo,
    PeerCache,
    ensure_node_id,
    open_registry,
    plan_timing,
)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("10.0.0.1:6222", "10.0.0.1:6222"),
        ("[2001:DB8:0::1]:6222", "[2001:db8::1]:6222"),
        ("node-1.example.com:7222", "node-1.example.com:7222"),
    ],
)
def test_cluster_address_forms(given: str, stored: str) -> None:
    assert NodeInfo(name="n", cluster_address=given).cluster_address == stored


@pytest.mark.parametrize(
    "bad", ["10.0.0.1", "::1:6222", "[nope]:6222", "10.0.0.1:0", "10.0.0.1:x", ":6222", "a b:1"]
)
def test_bad_cluster_addresses(bad: str) -> None:
    with pytest.raises(ValidationError):
        NodeInfo(name="n", cluster_address=bad)


@pytest.mark.parametrize("bad", ["", "-lead", "has space", "x" * 64, "ünï", "a/b"])
def test_bad_names(bad: str) -> None:
    with pytest.raises(ValidationError, match="not a valid node name"):
        NodeInfo(name=bad, cluster_address="10.0.0.1:6222")


def test_seed_shape_address_and_port() -> None:
    assert (
        NodeInfo.model_validate(
            {"name": "n", "address": "192.168.1.10", "port": 6222}
        ).cluster_address
        == "192.168.1.10:6222"
    )
    v6 = NodeInfo.model_validate({"name": "n", "address": "2001:db8::5", "port": 6222})
    assert (v6.cluster_address, v6.host, v6.port) == ("[2001:db8::5]:6222", "2001:db8::5", 6222)
    with pytest.raises(ValidationError, match="port"):
        NodeInfo.model_validate({"name": "n", "address": "192.168.1.10"})


def test_node_info_is_frozen() -> None:
    info = NodeInfo(name="n", cluster_address="10.0.0.1:6222")
    with pytest.raises(ValidationError):
        info.name = "m"  # type: ignore[misc]


def test_timing_rule() -> None:
    default = plan_timing(10)
    assert (default.ttl, default.request_timeout, default.retry_budget) == (30.0, 5.0, 10.0)
    assert plan_timing(60).request_timeout == 10.0  # never above 10 s
    assert plan_timing(1, request_timeout=0.2).request_timeout == 0.2
    with pytest.raises(ValueError, match="at least 0.1 s"):
        plan_timing(0.05)
    with pytest.raises(ValueError):
        plan_timing(float("nan"))


def test_timing_rule_clamps_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="registry")
    assert plan_timing(1, request_timeout=5).request_timeout == 0.5
    assert "breaks the timing rule" in caplog.text
    assert plan_timing(5000).interval == 1200.0
    assert "longer than the 1200 s maximum" in caplog.text


def test_backoff_grows_but_stays_within_the_interval() -> None:
    timing = plan_timing(1)
    delays = [max(timing.backoff(n) for _ in range(50)) for n in (1, 2, 3, 8)]
    assert delays == sorted(delays) and delays[-1] <= timing.interval / 4


@pytest.mark.parametrize(
    ("url", "kw", "needle"),
    [
        ("ftp://x", {}, "must start with http://"),
        ("registry:8500", {}, "must start with http://"),
        ("http://x:8500", {"service": "bad name"}, "not a valid service name"),
        ("http://x:8500", {"heartbeat_interval": 0.01}, "at least 0.1 s"),
        ("file://host/registry.json", {}, "file:///path"),
        ("file:///r.json?cluster_port=0", {}, "cluster port"),
    ],
)
def test_open_registry_refuses_bad_setup(url: str, kw: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        open_registry(url, **kw)


async def test_open_registry_picks_backend_and_accepts_secret_token() -> None:
    for url, backend in [
        ("http://r:8500", "http"),
        ("https://r", "http"),
        ("file:///tmp/r.json", "file"),
        ("memory://x", "memory"),
    ]:
        reg = open_registry(url, token=SecretStr("t"))
        assert reg.status().backend == backend
        await reg.close()
    shown = open_registry("http://user:pw@r:8500")
    assert shown.status().url == "http://r:8500"  # no credentials in status or logs
    await shown.close()


def test_peer_cache_round_trip_and_garbage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = PeerCache(tmp_path / "sub" / "peers.json")
    assert cache.load() is None
    nodes = [NodeInfo(name="a", cluster_address="10.0.0.1:6222", create_index=1)]
    cache.save(nodes, url="http://r", service="s")
    loaded = cache.load()
    assert loaded is not None and list(loaded.nodes) == nodes and loaded.url == "http://r"
    (tmp_path / "sub" / "peers.json").write_text("garbage")
    assert PeerCache(tmp_path / "sub" / "peers.json").load() is None
    assert "not a peer cache file" in caplog.text


def test_peer_cache_write_failure_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "file").write_text("")
    cache = PeerCache(tmp_path / "file" / "peers.json")  # parent is a file: cannot write
    cache.save([NodeInfo(name="a", cluster_address="10.0.0.1:6222")], url="u", service="s")
    assert "Cannot write the peer cache" in caplog.text


def test_node_id_is_created_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "data" / "node_id"
    first = ensure_node_id(path)
    assert ensure_node_id(path) == first and len(first) == 32
    path.write_text("not a node id!\n")
    with pytest.raises(ValueError, match="remove it"):
        ensure_node_id(path)


def test_cache_file_is_json_with_every_node(tmp_path: Path) -> None:
    cache = PeerCache(tmp_path / "peers.json")
    cache.save(
        [
            NodeInfo(name="a", cluster_address="10.0.0.1:6222"),
            NodeInfo(name="b", cluster_address="10.0.0.2:6222"),
        ],
        url="u",
        service="s",
    )
    data = json.loads((tmp_path / "peers.json").read_text())
    assert [n["name"] for n in data["nodes"]] == ["a", "b"] and data["service"] == "s"
