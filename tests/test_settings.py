from pathlib import Path

import pytest

from nimsforest.settings import SettingsError, load_settings, parse_duration


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("client_port: 5000\ncluster_port: 7000\nNATS_MONITOR_PORT: 9100\n")
    monkeypatch.setenv("NATS_CLIENT_PORT", "6000")
    monkeypatch.setenv("NATS_MONITOR_PORT", "9200")
    s = load_settings(cfg, monitor_port=9300)
    assert s.client_port == 6000  # env beats file
    assert s.cluster_port == 7000  # file beats default
    assert s.monitor_port == 9300  # flag beats env
    assert s.registry_service == "nimsforest"  # default


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ({"client_port": "abc"}, "NATS_CLIENT_PORT"),
        ({"monitor_port": 70000}, "NATS_MONITOR_PORT"),
        ({"node_name": "no spaces"}, "NATS_NODE_NAME"),
        ({"peer_grace_period": "5 fortnights"}, "CLUSTER_PEER_GRACE_PERIOD"),
        ({"registry_url": "ftp://x"}, "REGISTRY_URL"),
        ({"client_port": 4222, "cluster_port": 4222}, "must differ"),
    ],
)
def test_bad_values_are_one_sentence(flags: dict, needle: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(**flags)
    msg = str(err.value)
    assert needle in msg
    assert "\n" not in msg and msg.endswith(".")


def test_unknown_key_in_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("clustr_port: 1\n")
    with pytest.raises(SettingsError, match="unknown setting 'clustr_port'"):
        load_settings(cfg)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_durations() -> None:
    assert parse_duration("10s") == 10
    assert parse_duration("5m") == 300
    assert parse_duration("250ms") == 0.25
    assert parse_duration(3) == 3
