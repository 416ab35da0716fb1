"""The state file (limits, expansions, lock) and the provisioners (command, plugins, local checks)."""

from __future__ import annotations

import stat
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from nimsforest.grow.collect import GrowError
from nimsforest.grow.model import NodeTarget
from nimsforest.grow.provisioners import ProvisionerError, ProvisionRequest, available, load
from nimsforest.grow.provisioners.command import split_template
from nimsforest.grow.provisioners.local import next_loopback
from nimsforest.grow.state import Expansion, GrowState, StateFile, record, remember_limits

SECRET = "grow-test-secret-0123456789"


def request(tmp_path: Path, **kw: object) -> ProvisionRequest:
    values: dict = dict(node_name="n3", registry_url="http://10.0.0.5:8500", registry_service="nimsforest",
                        existing=(NodeTarget("n1", "http://127.0.0.1:8222", "127.0.0.1:6222"),),
                        workdir=tmp_path, timeout=30, cluster_secret=SECRET)
    values.update(kw)
    return ProvisionRequest(**values)


# --- state --------------------------------------------------------------------------------------


def test_state_round_trip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "grow.json"
    f = StateFile(path)
    with f.locked():
        state = f.load()
        assert state == GrowState()
        state = remember_limits(state, "forest-a", 5, None)
        state = record(state, "forest-a", Expansion(at=datetime.now(UTC), node="n3", provisioner="local", ok=True,
                                                    detail="ok."))
        f.save(state)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with f.locked():
        again = f.load()
    assert again == state
    assert again.forest("forest-a").max_nodes == 5 and again.forest("forest-a").cooldown_seconds is None
    assert again.forest("other") .expansions == ()


def test_only_the_last_expansions_are_kept() -> None:
    state = GrowState()
    for i in range(30):
        state = record(state, "f", Expansion(at=datetime.now(UTC), node=f"n{i}", provisioner="local", ok=True,
                                             detail="."))
    assert [e.node for e in state.forest("f").expansions] == [f"n{i}" for i in range(10, 30)]


def test_two_runs_cannot_hold_the_state_at_once(tmp_path: Path) -> None:
    path = tmp_path / "grow.json"
    with StateFile(path).locked():
        with pytest.raises(GrowError, match="Another nimsforest grow is running"):
            with StateFile(path).locked():
                pass
    with StateFile(path).locked():  # released afterwards
        pass


def test_a_foreign_state_file_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "grow.json"
    path.write_text("[1, 2, 3]")
    with StateFile(path).locked() as f, pytest.raises(GrowError, match="is not a grow state file"):
        f.load()


# --- provisioners ----------------------------------------------------------------------------


def test_unknown_provisioner_lists_the_available_ones() -> None:
    with pytest.raises(ProvisionerError, match="Unknown provisioner 'cloudy': available are command, local"):
        load("cloudy", {})
    assert {"local", "command"} <= set(available())


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("", "needs --command"),
        ("create {nme}", "unknown placeholder '{nme}'"),
        ("create 'unclosed", "cannot be split"),
        ("create {name", "malformed"),
    ],
)
def test_bad_command_templates(template: str, needle: str) -> None:
    with pytest.raises(ProvisionerError, match=needle.replace("{", r"\{").replace("}", r"\}")):
        load("command", {"command": template})


def test_template_words_are_filled_in_never_split() -> None:
    assert split_template("cloud create --name {name} --label 'a b'") == [
        "cloud", "create", "--name", "{name}", "--label", "a b"]


async def test_command_gets_the_name_and_user_data(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    script = tmp_path / "create.py"
    script.write_text(textwrap.dedent(f"""
        import os, stat, sys
        name, user_data = sys.argv[1], sys.argv[2]
        mode = oct(stat.S_IMODE(os.stat(user_data).st_mode))
        open({str(seen)!r}, "w").write(name + "\\n" + mode + "\\n" + open(user_data).read())
        print("created", name)
    """))
    p = load("command", {"command": f"{sys.executable} {script} {{name}} {{user_data_file}}"})
    result = await p.provision(request(tmp_path))
    assert result.ok, result.detail
    assert "requested node n3" in result.detail
    name, mode, user_data = seen.read_text().split("\n", 2)
    assert name == "n3" and mode == "0o600"
    assert user_data.startswith("#cloud-config\n")
    doc = yaml.safe_load(user_data)
    env = next(f for f in doc["write_files"] if f["path"] == "/etc/nimsforest/nimsforest.env")
    assert "NATS_NODE_NAME='n3'" in env["content"] and f"NATS_CLUSTER_SECRET='{SECRET}'" in env["content"]
    assert list((tmp_path / "user-data").iterdir()) == []  # the secret-bearing file is gone


async def test_command_failure_and_timeout_are_results(tmp_path: Path) -> None:
    failing = load("command", {"command": "sh -c 'echo quota exceeded for {name} >&2; exit 3'"})
    result = await failing.provision(request(tmp_path))
    assert not result.ok and result.detail == "The command sh exited with code 3: quota exceeded for n3."
    slow = load("command", {"command": "sleep 60"})
    result = await slow.provision(request(tmp_path, timeout=0.5))
    assert not result.ok and "did not finish within 0.5s and was killed" in result.detail
    missing = load("command", {"command": "/nonexistent/cloud create {name}"})
    result = await missing.provision(request(tmp_path))
    assert not result.ok and "cannot run" in result.detail


def test_provisioners_check_what_they_need(tmp_path: Path) -> None:
    with pytest.raises(ProvisionerError, match="needs the forest's registry"):
        load("local", {}).check(request(tmp_path, registry_url=None))
    with pytest.raises(ProvisionerError, match="needs the forest's registry"):
        load("command", {"command": "x {user_data_file}"}).check(request(tmp_path, registry_url=None))
    load("command", {"command": "x {name}"}).check(request(tmp_path, registry_url=None))  # no user-data: fine
    with pytest.raises(ProvisionerError, match="no option 'colour'"):
        load("local", {"colour": "red"})
    with pytest.raises(ProvisionerError, match="not an IP address"):
        load("local", {"host": "localhost-ish"})


def test_next_loopback_skips_used_addresses() -> None:
    assert next_loopback(set()) == "127.0.0.1"
    assert next_loopback({"127.0.0.1", "127.0.0.2"}) == "127.0.0.3"


def test_a_plugin_from_an_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fakecloud.py").write_text(textwrap.dedent("""
        from nimsforest.grow.provisioners import ProvisionResult

        class FakeCloud:
            name = "fakecloud"

            def __init__(self, options):
                self.region = options.get("region", "none")

            def check(self, request):
                pass

            async def provision(self, request):
                return ProvisionResult(True, request.node_name, f"created in {self.region}.")
    """))
    dist = tmp_path / "fakecloud-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakecloud\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[nimsforest.provisioners]\nfakecloud = fakecloud:FakeCloud\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert available()["fakecloud"] == "fakecloud:FakeCloud"
    plugin = load("fakecloud", {"region": "fsn1"})
    assert plugin.name == "fakecloud" and plugin.region == "fsn1"
