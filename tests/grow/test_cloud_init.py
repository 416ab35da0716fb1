"""`nimsforest cloud-init`: valid #cloud-config user-data with the unit, the env file and the commands."""

from __future__ import annotations

import stat
from pathlib import Path

import yaml

from nimsforest.deploy import render_unit
from tests.deploy.conftest import nimsforest, one_sentence

SECRET = "cloud-secret-0123456789abcdef"
TOKEN = "registry-token-abcdef"


def render(*extra: str, env: dict[str, str] | None = None):  # noqa: ANN201
    return nimsforest("cloud-init", "--registry-url", "http://10.0.0.5:8500", "--node-name", "n4", *extra,
                      env={"NATS_CLUSTER_SECRET": SECRET, "REGISTRY_TOKEN": TOKEN, **(env or {})})


def test_user_data_is_cloud_config_yaml() -> None:
    r = render("--package", "nimsforest==0.1.0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("#cloud-config\n")
    doc = yaml.safe_load(r.stdout)
    assert doc["package_update"] is True and {"python3", "python3-venv"} <= set(doc["packages"])
    user = next(u for u in doc["users"] if isinstance(u, dict))
    assert user["name"] == "nimsforest" and user["system"] is True and user["shell"] == "/usr/sbin/nologin"

    files = {f["path"]: f for f in doc["write_files"]}
    env = files["/etc/nimsforest/nimsforest.env"]
    assert env["permissions"] == "0600" and env["owner"] == "root:root"
    values = dict(line.split("=", 1) for line in env["content"].splitlines() if not line.startswith("#"))
    assert values == {"REGISTRY_URL": "'http://10.0.0.5:8500'", "NATS_NODE_NAME": "'n4'",
                      "NATS_CLUSTER_SECRET": f"'{SECRET}'", "REGISTRY_TOKEN": f"'{TOKEN}'"}
    unit = files["/etc/systemd/system/nimsforest.service"]
    assert unit["content"] == render_unit("nimsforest.service")  # the same unit as systemd/
    assert unit["permissions"] == "0644"

    cmds = [" ".join(c) for c in doc["runcmd"]]
    venv = cmds.index("python3 -m venv /opt/nimsforest")
    install = cmds.index("/opt/nimsforest/bin/pip install --quiet nimsforest==0.1.0")
    enable = cmds.index("systemctl enable --now nimsforest.service")
    assert venv < install < cmds.index("systemctl daemon-reload") < enable
    assert not any(word in " ".join(cmds) for word in ("ufw", "iptables", "firewall-cmd"))  # opens nothing


def test_secrets_are_only_in_the_0600_env_file() -> None:
    r = render()
    doc = yaml.safe_load(r.stdout)
    env_content = next(f["content"] for f in doc["write_files"] if f["path"].endswith("nimsforest.env"))
    for secret in (SECRET, TOKEN):
        assert r.stdout.count(secret) == 1 and secret in env_content
    without_env = [f for f in doc["write_files"] if not f["path"].endswith("nimsforest.env")]
    assert SECRET not in yaml.safe_dump([without_env, doc["runcmd"], doc.get("final_message")])


def test_the_header_documents_the_firewall() -> None:
    header = [line for line in render().stdout.splitlines() if line.startswith("#")]
    text = " ".join(header)
    assert "6222/tcp" in text and "8222/tcp" in text and "No firewall port is opened" in text


def test_output_file_is_private(tmp_path: Path) -> None:
    out = tmp_path / "user-data.yaml"
    r = render("--output", str(out))
    assert r.returncode == 0 and r.stdout == ""
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.read_text().startswith("#cloud-config")


def test_bad_values_are_usage_errors() -> None:
    r = nimsforest("cloud-init", "--registry-url", "file:///x.json", "--node-name", "n4")
    assert r.returncode == 2 and "http://" in one_sentence(r.stderr)
    r = nimsforest("cloud-init", "--registry-url", "http://r:8500", "--node-name", "no good")
    assert r.returncode == 2 and "not a valid node name" in one_sentence(r.stderr)
    r = nimsforest("cloud-init", "--registry-url", "http://r:8500", "--node-name", "n4", "--package", "a b")
    assert r.returncode == 2
    r = nimsforest("cloud-init", "--registry-url", "http://r:8500", "--node-name", "n4",
                   env={"NATS_CLUSTER_SECRET": "it's"})
    assert r.returncode == 2 and "quotes" in one_sentence(r.stderr)
    assert nimsforest("cloud-init", "--registry-url", "http://r:8500").returncode == 2  # --node-name missing
