"""nats.conf rendering, checked by the real `nats-server -t`."""

from __future__ import annotations

from pathlib import Path

import pytest

from natsembed import (
    ClusterConfig,
    ConfigInvalid,
    Credentials,
    JetStreamConfig,
    ServerConfig,
    check_config,
    find_nats_server,
    render_config,
    write_config,
)


def config(tmp_path: Path, **cluster: object) -> ServerConfig:
    return ServerConfig(
        server_name="n1",
        client_listen="0.0.0.0:4222",
        client_advertise="10.0.0.1:4222",
        monitor_listen="0.0.0.0:8222",
        tags=("role:node", "node:n1"),
        jetstream=JetStreamConfig(store_dir=tmp_path / "store", max_mem="64MB", max_file="1GB"),
        cluster=ClusterConfig(name="forest", listen="0.0.0.0:6222", advertise="10.0.0.1:6222",
                              routes=("10.0.0.2:6222", "10.0.0.3:6222", "10.0.0.2:6222", "10.0.0.1:6222"),
                              **cluster),  # type: ignore[arg-type]
        credentials=Credentials.derived("s3cret"),
    )


async def test_rendered_config_has_every_part_and_nats_server_accepts_it(tmp_path: Path) -> None:
    text = render_config(config(tmp_path))
    await check_config(find_nats_server(), text, tmp_path)
    creds = Credentials.derived("s3cret")
    for part in ('server_name: "n1"', 'listen: "0.0.0.0:4222"', 'client_advertise: "10.0.0.1:4222"',
                 'http: "0.0.0.0:8222"', 'server_tags: ["role:node", "node:n1"]', "max_memory_store: 64MB",
                 "max_file_store: 1GB", 'system_account: "SYS"', "jetstream: enabled",
                 'name: "forest"', 'advertise: "10.0.0.1:6222"', "authorization {",
                 f'password: "{creds.route_password}"'):
        assert part in text, part
    routes = [line.strip() for line in text.splitlines() if "nats-route://" in line]
    # deduplicated, and never a route to ourselves (our own advertised address)
    assert routes == [f'"nats-route://route:{creds.route_password}@10.0.0.2:6222"',
                      f'"nats-route://route:{creds.route_password}@10.0.0.3:6222"']


async def test_routes_without_authorization(tmp_path: Path) -> None:
    text = render_config(config(tmp_path, authorize=False))
    await check_config(find_nats_server(), text, tmp_path)
    assert "authorization" not in text and '"nats-route://10.0.0.2:6222"' in text


async def test_strings_are_quoted_safely(tmp_path: Path) -> None:
    cfg = config(tmp_path).model_copy(update={"server_name": 'we"ird\\name'})
    await check_config(find_nats_server(), render_config(cfg), tmp_path)


async def test_a_refused_config_is_one_sentence_and_nothing_is_written(tmp_path: Path) -> None:
    cfg = config(tmp_path).model_copy(update={"client_listen": "0.0.0.0:notaport"})
    target = tmp_path / "nats.conf"
    with pytest.raises(ConfigInvalid) as err:
        await write_config(find_nats_server(), target, render_config(cfg))
    assert str(err.value).startswith("nats-server refused the generated configuration:")
    assert "\n" not in str(err.value)
    assert not target.exists() and not list(tmp_path.glob(".check-*"))


def test_sizes_are_validated_before_rendering(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        JetStreamConfig(store_dir=tmp_path, max_mem="lots")
