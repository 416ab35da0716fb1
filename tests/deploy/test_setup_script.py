"""scripts/setup-node.sh: syntax, options, and a dry run whose commands the real CLI accepts.

The script is never run for real here (it creates users and systemd units as root);
instead the commands its dry run prints are replayed against this checkout's CLI.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nimsforest.deploy import render_unit
from tests.deploy.conftest import ROOT, nimsforest

SCRIPT = ROOT / "scripts" / "setup-node.sh"
SECRET = "setup-test-secret-0123456789"
VENV = Path(sys.executable).parent.parent  # a real prefix: printed commands point at this checkout's CLI


def setup(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "REGISTRY_"))}
    return subprocess.run(["bash", str(SCRIPT), *args], env={**base, **(env or {})}, capture_output=True,
                          text=True, timeout=60, check=False)


def commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ") and
            not line.startswith("+ write ")]


def test_bash_syntax() -> None:
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_shellcheck() -> None:
    tool = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if tool is None:
        pytest.skip("shellcheck is not installed")
    r = subprocess.run([tool, str(SCRIPT)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout


def test_help() -> None:
    r = setup("--help")
    assert r.returncode == 0
    for option in ("--registry-url", "--node-name", "--cluster-secret", "--mode", "--cluster-peers", "--prefix",
                   "--package", "--dry-run"):
        assert option in r.stdout, option


def test_embedded_dry_run(tmp_path: Path) -> None:
    r = setup("--dry-run", "--registry-url", "http://10.0.0.5:8500", "--node-name", "n1", "--prefix", str(VENV),
              "--package", "nimsforest==0.1.0", env={"NATS_CLUSTER_SECRET": SECRET, "REGISTRY_TOKEN": "tok-123"})
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr and "tok-123" not in r.stdout + r.stderr
    out = r.stdout
    env_file = [line[4:] for line in out.splitlines() if line.startswith("|   ")]
    assert "NATS_NODE_NAME='n1'" in env_file and "REGISTRY_URL='http://10.0.0.5:8500'" in env_file
    assert "NATS_CLUSTER_SECRET='REDACTED'" in env_file and "REGISTRY_TOKEN='REDACTED'" in env_file
    assert "+ write /etc/nimsforest/nimsforest.env (mode 0600, owner root:root):" in out
    cmds = commands(out)
    flat = [" ".join(c) for c in cmds]
    order = [
        f"{VENV}/bin/python -m pip install --quiet --upgrade nimsforest==0.1.0",
        f"{VENV}/bin/nimsforest systemd-unit nimsforest.service",
        "systemctl daemon-reload",
        "systemctl enable nimsforest.service",
        "systemctl restart nimsforest.service",
        f"{VENV}/bin/python -m nimsforest.cli.verify --mode embedded --min-size 1",
    ]
    positions = [next(i for i, f in enumerate(flat) if f.startswith(o)) for o in order]
    assert positions == sorted(positions), flat
    assert not any("nats.service" in f for f in flat)

    # The unit command it prints works with this checkout's CLI and writes the expected unit.
    unit_cmd = cmds[positions[1]]
    unit_cmd[unit_cmd.index("--output") + 1] = str(tmp_path / "unit")
    done = subprocess.run(unit_cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "unit").read_text() == render_unit("nimsforest.service", prefix=str(VENV))
    # ...and so do the verifier's flags (nothing listens on this API: it reports, exit 1).
    verify_cmd = cmds[positions[5]]
    verify_cmd[verify_cmd.index("--timeout") + 1] = "0s"
    checked = subprocess.run([*verify_cmd, "--api", "127.0.0.1:1"], capture_output=True, text=True, check=False)
    assert checked.returncode == 1 and "Not a cluster member" in checked.stderr, checked.stderr


def test_sidecar_dry_run(tmp_path: Path) -> None:
    r = setup("--dry-run", "--mode", "sidecar", "--cluster-peers", "127.0.0.2:6222,127.0.0.3:6222",
              "--advertise", "127.0.0.1", "--node-name", "s1", "--prefix", str(VENV), "--cluster-secret", SECRET)
    assert r.returncode == 0, r.stderr
    assert SECRET not in r.stdout + r.stderr
    cmds = commands(r.stdout)
    flat = [" ".join(c) for c in cmds]
    assert "systemctl enable nats.service nimsforest-sidecar.service" in flat
    assert any(f.startswith(f"{VENV}/bin/python -m nimsforest.cli.verify --mode sidecar --min-size 2")
               for f in flat)
    assert not any("systemd-unit nimsforest.service" in f for f in flat)
    # The nats-config command it prints renders a file nats-server accepts (secret put back in).
    cfg = next(c for c in cmds if "nats-config" in c)
    assert cfg[0] == "env" and cfg[1] == "NATS_CLUSTER_SECRET=REDACTED"  # never on the command line
    cfg[1] = f"NATS_CLUSTER_SECRET={SECRET}"
    cfg[cfg.index("--output") + 1] = str(tmp_path / "nats.conf")
    cfg[cfg.index("--store-dir") + 1] = str(tmp_path / "js")
    done = subprocess.run(cfg, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert 'server_name: "s1"' in (tmp_path / "nats.conf").read_text()
    for unit in ("nats.service", "nimsforest-sidecar.service"):
        unit_cmd = next(c for c in cmds if "systemd-unit" in c and unit in c)
        unit_cmd[unit_cmd.index("--output") + 1] = str(tmp_path / unit)
        assert subprocess.run(unit_cmd, capture_output=True, check=False).returncode == 0
        assert (tmp_path / unit).read_text() == render_unit(unit, prefix=str(VENV))


def test_no_start_stops_after_enabling() -> None:
    r = setup("--dry-run", "--no-start", "--registry-url", "http://r:8500", env={"NATS_CLUSTER_SECRET": SECRET})
    assert r.returncode == 0, r.stderr
    flat = [" ".join(c) for c in commands(r.stdout)]
    assert "systemctl enable nimsforest.service" in flat
    assert not any("restart" in f or "verify" in f for f in flat)


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--registry-url", "http://r:8500"], {}, "cluster secret is required"),
        (["--registry-url", "http://r:8500"], {"NATS_CLUSTER_SECRET": "short"}, "at least 16"),
        ([], {"NATS_CLUSTER_SECRET": SECRET}, "needs --registry-url"),
        (["--mode", "sidecar"], {"NATS_CLUSTER_SECRET": SECRET}, "needs --cluster-peers"),
        (["--mode", "edge", "--registry-url", "http://r:8500"], {"NATS_CLUSTER_SECRET": SECRET},
         "embedded or sidecar"),
        (["--registry-url", "ftp://r"], {"NATS_CLUSTER_SECRET": SECRET}, "http://"),
        (["--registry-url", "http://r:8500", "--node-name", "bad name"], {"NATS_CLUSTER_SECRET": SECRET},
         "--node-name"),
        (["--registry-url", "http://r:8500", "--prefix", "relative"], {"NATS_CLUSTER_SECRET": SECRET}, "--prefix"),
        (["--registry-url", "http://r:8500"], {"NATS_CLUSTER_SECRET": SECRET + "'"}, "quotes"),
        (["--registry-url", "http://r:8500", "--cluster-peers", "a:1"], {"NATS_CLUSTER_SECRET": SECRET},
         "sidecar mode"),
        (["--colour", "red"], {}, "Unknown option --colour"),
        (["--registry-url"], {}, "needs a value"),
    ],
)
def test_bad_options_exit_2(args: list[str], env: dict[str, str], needle: str) -> None:
    r = setup("--dry-run", *args, env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr.splitlines()[0]
    assert r.stdout == ""  # nothing was done or printed as done


def test_refuses_to_run_for_real_without_root() -> None:
    as_nobody: list[str] = []
    if os.geteuid() == 0:  # never let it really install: drop to an unprivileged user first
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop privileges")
        as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "REGISTRY_"))}
    r = subprocess.run([*as_nobody, "bash", str(SCRIPT), "--registry-url", "http://r:8500"],
                       env={**base, "NATS_CLUSTER_SECRET": SECRET}, capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 1 and "as root" in r.stderr, r.stderr
    assert r.stdout == ""


def test_cli_for_units_is_registered() -> None:
    assert nimsforest("systemd-unit", "--help").returncode == 0
