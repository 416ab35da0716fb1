"""systemd units: rendered from the package's templates, identical to systemd/, accepted by systemd."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from natsembed import Timeouts
from nimsforest.deploy import UNIT_NAMES, UnitError, render_unit
from nimsforest.settings import Settings
from tests.deploy.conftest import ROOT, nimsforest, one_sentence


def directives(text: str) -> dict[str, list[str]]:
    """'Section.Key' -> every value it is given (units may repeat keys)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def one(d: dict[str, list[str]], key: str) -> str:
    values = d.get(key)
    assert values and len(values) == 1, f"{key}: {values}"
    return values[0]


def seconds(value: str) -> float:
    units = {"min": 60, "s": 1}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def test_systemd_folder_is_the_rendering_with_defaults() -> None:
    folder = ROOT / "systemd"
    assert sorted(p.name for p in folder.iterdir()) == sorted(UNIT_NAMES)
    for name in UNIT_NAMES:
        assert (folder / name).read_text() == render_unit(name), f"systemd/{name} drifted: run `make units`"


def test_embedded_unit() -> None:
    d = directives(render_unit("nimsforest.service"))
    assert one(d, "Service.Type") == "notify" and one(d, "Service.NotifyAccess") == "main"
    assert one(d, "Service.ExecStart") == "/opt/nimsforest/bin/nimsforest"  # the production command
    assert one(d, "Service.ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(d, "Service.Restart") == "always"
    assert one(d, "Service.EnvironmentFile") == "/etc/nimsforest/nimsforest.env"
    assert one(d, "Service.User") == "nimsforest" and one(d, "Service.StateDirectory") == "nimsforest"
    assert d["Service.Environment"] == ["NATS_DATA_DIR=/var/lib/nimsforest"]
    # SIGTERM to the daemon only: it stops nats-server itself, lame duck first.
    assert one(d, "Service.KillMode") == "process"
    worst_stop = 5 + Timeouts().lame_duck + Settings.model_fields["nats_stop_timeout"].default + Timeouts().kill
    assert seconds(one(d, "Service.TimeoutStopSec")) >= worst_stop + 30
    assert one(d, "Service.LimitNOFILE") == "65536"
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("ReadWritePaths", "/var/lib/nimsforest")]:
        assert one(d, f"Service.{key}") == value, key
    assert one(d, "Install.WantedBy") == "multi-user.target"


def test_sidecar_units() -> None:
    nats = directives(render_unit("nats.service"))
    assert one(nats, "Service.ExecStart") == "/opt/nimsforest/bin/nats-server -c /etc/nats/nats.conf"
    assert one(nats, "Service.ExecStartPre") == "/opt/nimsforest/bin/nats-server -t -c /etc/nats/nats.conf"
    assert one(nats, "Service.KillSignal") == "SIGUSR2"  # lame duck, then nats-server exits by itself
    assert seconds(one(nats, "Service.TimeoutStopSec")) > 30  # the rendered lame_duck_duration
    assert one(nats, "Service.Restart") == "always" and one(nats, "Service.User") == "nats"
    side = directives(render_unit("nimsforest-sidecar"))
    for key in ("Requires", "BindsTo"):
        assert one(side, f"Unit.{key}") == "nats.service"
    assert "nats.service" in one(side, "Unit.After").split()
    assert "NATS_URL=nats://127.0.0.1:4222" in side["Service.Environment"]
    assert one(side, "Service.Type") == "notify"


def test_variables_are_applied() -> None:
    text = render_unit("nimsforest.service", prefix="/srv/forest/", user="forest", env_file="/etc/f.env",
                       data_dir="/data/forest")
    d = directives(text)
    assert one(d, "Service.ExecStart") == "/srv/forest/bin/nimsforest"
    assert one(d, "Service.User") == "forest" and one(d, "Service.Group") == "forest"
    assert one(d, "Service.ReadWritePaths") == "/data/forest"
    assert "Service.StateDirectory" not in d  # not under /var/lib: the directory must exist
    nats = directives(render_unit("nats.service", nats_server="/usr/local/bin/nats-server"))
    assert one(nats, "Service.ExecStart").startswith("/usr/local/bin/nats-server -c ")


@pytest.mark.parametrize(
    ("name", "values", "needle"),
    [
        ("postgres.service", {}, "Unknown unit"),
        ("nats", {"colour": "red"}, "Unknown unit variable"),
        ("nats", {"prefix": "opt/nimsforest"}, "absolute path"),
        ("nats", {"prefix": "/opt/nims forest"}, "absolute path"),
        ("nats", {"user": "Root;rm"}, "not a valid user"),
        ("nimsforest-sidecar", {"nats_url": "nats://app:pw@127.0.0.1:4222"}, "credentials belong"),
    ],
)
def test_bad_names_and_values(name: str, values: dict[str, str], needle: str) -> None:
    with pytest.raises(UnitError, match=needle) as err:
        render_unit(name, **values)
    assert str(err.value).endswith(".") and "\n" not in str(err.value)


def test_cli(tmp_path: Path) -> None:
    listed = nimsforest("systemd-unit", "--list")
    assert listed.returncode == 0 and listed.stdout.split() == list(UNIT_NAMES)
    out = tmp_path / "nimsforest.service"
    r = nimsforest("systemd-unit", "nimsforest.service", "--prefix", "/srv/nf", "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_text() == render_unit("nimsforest.service", prefix="/srv/nf")
    printed = nimsforest("systemd-unit", "nats")
    # rendered for this installation: the environment the command runs from
    assert printed.stdout == render_unit("nats.service", prefix=sys.prefix)
    unit = nimsforest("systemd-unit", "nimsforest.service").stdout
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split("=", 1)[1].split()[0] == f"{sys.prefix}/bin/nimsforest"
    assert Path(sys.prefix, "bin", "nimsforest").exists()
    bad = nimsforest("systemd-unit", "nope")
    assert bad.returncode == 2 and "Unknown unit" in one_sentence(bad.stderr)
    assert nimsforest("systemd-unit").returncode == 2


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    verify = lambda *files: subprocess.run(  # noqa: E731
        [tool, "verify", "--man=no", "--generators=no", *files], cwd=tmp_path,
        capture_output=True, text=True, timeout=60, check=False,
    )
    # Can the tool verify anything here? (It needs no running systemd, but some sandboxes break it.)
    control = tmp_path / "control.service"
    control.write_text("[Unit]\nDescription=control\n[Service]\nType=exec\nExecStart=/bin/true\n")
    probe = verify(str(control))
    if probe.returncode != 0 or probe.stdout.strip() or probe.stderr.strip():
        pytest.skip(f"systemd-analyze cannot verify units here: {(probe.stderr or probe.stdout).strip()[:200]}")
    # ExecStart binaries must exist: point the prefix at real executables.
    prefix = tmp_path / "venv"
    (prefix / "bin").mkdir(parents=True)
    for exe in ("nimsforest", "nats-server"):
        os.symlink(Path(sys.executable).parent / exe, prefix / "bin" / exe)
    files = []
    for name in UNIT_NAMES:
        path = tmp_path / name
        path.write_text(render_unit(name, prefix=str(prefix)))
        files.append(str(path))
    r = verify(*files)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    # ...and it does complain about a broken unit, so the check above can fail.
    broken = tmp_path / "broken.service"
    broken.write_text(render_unit("nimsforest.service", prefix=str(prefix)).replace("Restart=always",
                                                                                      "Restart=sometimes"))
    assert "sometimes" in verify(str(broken)).stderr
