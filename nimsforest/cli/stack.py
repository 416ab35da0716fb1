"""`nimsforest stack ...` and `nimsforest service NAME spec|run|command`: the seed's stack.

The stack's root is the current folder (or --root): its manifests are `services/` there
when it exists (else the default stack shipped with NimsForest), its data goes to `.data/`
and its generated files, logs, status and pid file to `.nimsforest-stack/`. `.env` in the
root is loaded first, as the seed does (the environment wins over it).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from nimsforest.cli._exit import EXIT_USAGE, fail

F = TypeVar("F", bound=Callable[..., Any])

UP_TIMEOUT_S = 180.0


def _root_options(fn: F) -> F:
    fn = click.option("--services", "services", type=click.Path(path_type=Path), default=None,
                      help="The manifests folder [default: ROOT/services, else the default stack].")(fn)
    fn = click.option("--root", type=click.Path(path_type=Path), default=Path("."),
                      show_default=True,
                      help="The stack's folder (.env, services/, .data/, .nimsforest-stack/).")(fn)
    return fn


def _paths(root: Path, services: Path | None) -> Any:
    from nimsforest.stack import StackPaths

    return StackPaths.for_root(root, services)


def _env_loader(root: Path) -> Callable[[], Mapping[str, str]]:
    """The environment the manifests see: .env in the root, under the real environment.

    As the seed does, .env is also loaded into this process's environment (without
    overriding it), so the services inherit it; it is read again at every regeneration.
    """
    from dotenv import dotenv_values, load_dotenv

    load_dotenv(root / ".env", override=False)

    def load() -> Mapping[str, str]:

        from_file = {k: v for k, v in dotenv_values(root / ".env").items() if v is not None}
        return {**from_file, **os.environ}

    return load


def _desired(paths: Any, env: Mapping[str, str]) -> Any:
    from nimsforest.stack import ManifestInvalid, desired_services

    try:
        return desired_services(paths, env)
    except ManifestInvalid as exc:
        fail(str(exc), EXIT_USAGE)


@click.group("stack")
def stack() -> None:
    """Run NimsForest, PocketBase and Caddy as one stack, from service manifests.

    \b
      nimsforest stack up [--detach]    start (health-gated, in dependency order)
      nimsforest stack status [--json]  each service: state, pid, restarts, health, ports
      nimsforest stack logs [SERVICE] [-f]
      nimsforest stack reload           apply changed manifests (also: SIGHUP, file watch)
      nimsforest stack plan             the resolved services as process-compose YAML
      nimsforest stack down [--purge]   stop everything (and remove .data/, .nimsforest-stack/)
    """


@stack.command("up")
@_root_options
@click.option("--detach", "-d", is_flag=True, help="Run the supervisor in the background.")
def up(root: Path, services: Path | None, detach: bool) -> None:
    """Start the stack: each service once what it depends on is healthy.

    Runs in the foreground until Ctrl-C or `stack down`, or with --detach in the
    background (pid in .nimsforest-stack/stack.pid) once every service is up. Running
    `up` again while the stack runs changes nothing that has not changed: it asks the
    supervisor to apply the manifests as they are now.
    """
    from nimsforest.stack import running_supervisor

    paths = _paths(root, services)
    env = _env_loader(paths.root)
    desired = _desired(paths, env())  # a bad manifest: one sentence, nothing starts
    pid = running_supervisor(paths.stack)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
        click.echo(f"The stack is already running (pid {pid}); it applies the manifests as they are.")
        return
    from nimsforest.stack import ports_in_use

    taken = ports_in_use(desired)
    if taken:
        fail(f"{taken[0]} Nothing was started.", EXIT_USAGE)
    if detach:
        _up_detached(paths, services)
        return
    from nimsforest.logs import setup_logging
    from nimsforest.stack import StackError, supervise

    setup_logging(os.environ.get("NIMSFOREST_LOG_LEVEL", "info"))
    try:
        asyncio.run(supervise(paths, env, desired))
    except StackError as exc:
        fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:  # pragma: no cover - the signal handler normally takes it
        pass


def _up_detached(paths: Any, services: Path | None) -> None:
    from nimsforest.stack import ServiceState, read_status

    paths.stack.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "nimsforest", "stack", "up", "--root", str(paths.root)]
    if services is not None:
        args += ["--services", str(paths.services)]
    with open(paths.stack / "supervisor.log", "ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            fail(f"The stack supervisor exited with code {code}; see "
                 f"{paths.stack / 'supervisor.log'}.")
        status = read_status(paths.stack)
        if status is not None and status.supervisor_pid == proc.pid:
            if status.settled:
                click.echo(f"The stack is up (supervisor pid {proc.pid}).")
                _print_status(status)
                return
            failed = [s.name for s in status.services if s.state is ServiceState.FAILED]
            if failed:
                _print_status(status)
                fail(f"Service {failed[0]} failed (see `nimsforest stack logs {failed[0]}`); "
                     "the stack runs on without it.")
        time.sleep(0.1)
    fail(f"The stack is not up after {UP_TIMEOUT_S:g}s; `nimsforest stack status` shows why.")


@stack.command("down")
@_root_options
@click.option("--purge", is_flag=True, help="Also remove .data/ and .nimsforest-stack/ (asks first).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before --purge removes data.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait for the stop.")
def down(root: Path, services: Path | None, purge: bool, yes: bool, timeout: float) -> None:
    """Stop every service in reverse dependency order, then the supervisor."""
    from nimsforest.stack import running_supervisor

    paths = _paths(root, services)
    pid = running_supervisor(paths.stack)
    if pid is None:
        click.echo("The stack is not running.")
    else:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while running_supervisor(paths.stack) is not None:
            if time.monotonic() > deadline:
                fail(f"The stack supervisor (pid {pid}) did not stop within {timeout:g}s.")
            time.sleep(0.1)
        click.echo("The stack is stopped.")
    if purge:
        targets = [p for p in (paths.data, paths.stack) if p.exists()]
        if not targets:
            return
        if not yes:
            click.confirm(f"Remove {' and '.join(str(t) for t in targets)}?", abort=True)
        for t in targets:
            shutil.rmtree(t)
        click.echo(f"Removed {' and '.join(str(t) for t in targets)}.")


def _print_status(status: Any) -> None:
    from tabulate import tabulate

    rows = [[s.name, s.state.value, s.pid or "-", s.restarts, s.health.value,
             ", ".join(f"{n}:{p}" for n, p in sorted(s.ports.items())) or "-"]
            for s in status.services]
    click.echo(tabulate(rows, headers=["SERVICE", "STATE", "PID", "RESTARTS", "HEALTH", "PORTS"]))


@stack.command("status")
@_root_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(root: Path, services: Path | None, as_json: bool) -> None:
    """Each service: state, pid, restarts, health and ports (exit code 1 when not running)."""
    from nimsforest.stack import read_status, running_supervisor

    paths = _paths(root, services)
    pid = running_supervisor(paths.stack)
    current = read_status(paths.stack) if pid is not None else None
    if current is None:
        if as_json:
            click.echo(json.dumps({"running": False}))
        else:
            click.echo("The stack is not running.")
        sys.exit(1)
    if as_json:
        click.echo(json.dumps({"running": True, **current.model_dump(mode="json")}, indent=2))
        return
    click.echo(f"Stack {current.phase.value} (supervisor pid {current.supervisor_pid})")
    _print_status(current)


@stack.command("logs")
@_root_options
@click.argument("service", required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (Ctrl-C ends).")
def logs(root: Path, services: Path | None, service: str | None, follow: bool) -> None:
    """Print the services' logs (one SERVICE, or all with the service name before each line)."""
    paths = _paths(root, services)
    files = sorted(paths.logs.glob("*.log")) if paths.logs.is_dir() else []
    if service is not None:
        files = [f for f in files if f.stem == service]
        if not files:
            fail(f"No log for service {service} in {paths.logs}.", EXIT_USAGE)
    if not files:
        click.echo("No logs yet.")
        return
    prefix = service is None
    offsets: dict[Path, int] = {}
    for f in files:
        data = f.read_bytes()
        offsets[f] = len(data)
        _echo_lines(f.stem, data, prefix)
    while follow:
        try:
            time.sleep(0.2)
        except KeyboardInterrupt:
            return
        for f in sorted(paths.logs.glob("*.log")):
            if service is not None and f.stem != service:
                continue
            size = f.stat().st_size
            start = offsets.get(f, 0) if size >= offsets.get(f, 0) else 0
            if size > start:
                with open(f, "rb") as fh:
                    fh.seek(start)
                    data = fh.read()
                offsets[f] = start + len(data)
                _echo_lines(f.stem, data, prefix)


def _echo_lines(name: str, data: bytes, prefix: bool) -> None:
    for line in data.decode(errors="replace").splitlines():
        click.echo(f"{name:>12} | {line}" if prefix else line)


@stack.command("reload")
@_root_options
def reload(root: Path, services: Path | None) -> None:
    """Apply the manifests as they are now: changed services restart, others keep running."""
    from nimsforest.stack import running_supervisor

    paths = _paths(root, services)
    _desired(paths, _env_loader(paths.root)())  # say what is wrong here, not only in its log
    pid = running_supervisor(paths.stack)
    if pid is None:
        fail("The stack is not running.")
    os.kill(pid, signal.SIGHUP)
    click.echo(f"Asked the stack (pid {pid}) to apply the manifests.")


@stack.command("plan")
@_root_options
def plan_(root: Path, services: Path | None) -> None:
    """Print the resolved services as process-compose YAML (secrets shown as ***)."""
    from nimsforest.stack import to_process_compose

    paths = _paths(root, services)
    click.echo(to_process_compose(_desired(paths, _env_loader(paths.root)())), nl=False)


@stack.command("mirror")
def mirror() -> None:
    """Mirror the node's Soil into PocketBase (the stack's soil-mirror service runs this).

    Configured by the environment: MIRROR_NATS_URL, MIRROR_NODE_DATA_DIR,
    MIRROR_POCKETBASE_URL, MIRROR_COLLECTION, MIRROR_READY_FILE, POCKETBASE_ADMIN_EMAIL,
    POCKETBASE_ADMIN_PASSWORD.
    """
    from pydantic import ValidationError

    from nimsforest.logs import setup_logging
    from nimsforest.stack.mirror import MirrorSettings, run_mirror

    setup_logging(os.environ.get("NIMSFOREST_LOG_LEVEL", "info"))
    try:
        settings = MirrorSettings.from_environment()
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"Soil mirror settings: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}.",
             EXIT_USAGE)
    asyncio.run(run_mirror(settings))


@click.command("service")
@_root_options
@click.argument("name")
@click.argument("action", type=click.Choice(["spec", "run", "command"]))
def service(root: Path, services: Path | None, name: str, action: str) -> None:
    """One service of the stack: its resolved spec, its command line, or run it alone.

    \b
      nimsforest service pocketbase spec      the resolved service as JSON
      nimsforest service pocketbase command   the command line (with its environment)
      nimsforest service pocketbase run       run it in the foreground, without the stack
    """
    paths = _paths(root, services)
    desired = _desired(paths, _env_loader(paths.root)())
    spec = desired.by_name().get(name)
    if spec is None:
        fail(f"No service {name}; the stack has {', '.join(desired.names())}.", EXIT_USAGE)
    if action == "spec":
        click.echo(json.dumps(_spec_json(spec), indent=2))
    elif action == "command":
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in spec.env)
        click.echo(f"{env} {shlex.join(spec.argv)}".strip())
    else:
        if spec.config_file is not None:
            spec.config_file.path.parent.mkdir(parents=True, exist_ok=True)
            spec.config_file.path.write_text(spec.config_file.text)
        paths.data.mkdir(parents=True, exist_ok=True)
        os.chdir(paths.root)
        os.execvpe(spec.argv[0], list(spec.argv), {**os.environ, **dict(spec.env)})


def _spec_json(spec: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "command": list(spec.argv),
        "env": dict(spec.env),
        "ports": {n: p.model_dump(mode="json") for n, p in spec.ports},
        "depends_on": {d: c.value for d, c in spec.depends_on},
        "readiness_probe": spec.readiness.model_dump(mode="json") if spec.readiness else None,
        "liveness_probe": spec.liveness.model_dump(mode="json") if spec.liveness else None,
        "availability": spec.availability.model_dump(mode="json"),
        "shutdown": spec.shutdown.model_dump(mode="json"),
        "config_file": str(spec.config_file.path) if spec.config_file else None,
    }
