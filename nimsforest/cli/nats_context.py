"""`nimsforest nats-context`: a context for the standard `nats` CLI with the forest's
application user and its servers' URLs, and the connect details for nats.py and nats.js.

The file is the `nats` CLI's own context format (`~/.config/nats/context/<name>.json`, the
JSON of its natscontext settings), so `nats --context <name> stream ls` works. The
application user comes from the forest's secret (NATS_CLUSTER_SECRET, the same on every
node) or, without one, from the node's data directory (credentials.json).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from nimsforest.cli._common import EXIT_USAGE, fail, run_async, settings_from
from nimsforest.settings import Settings

CREDENTIALS_FILE = "credentials.json"
WILDCARDS = ("0.0.0.0", "::", "")
# every field of the `nats` CLI's context file (natscontext settings), with its empty value
CONTEXT_FIELDS: dict[str, Any] = {
    "description": "", "url": "", "socks_proxy": "", "token": "", "user": "", "password": "",
    "creds": "", "nkey": "", "cert": "", "key": "", "ca": "", "nsc": "", "jetstream_domain": "",
    "jetstream_api_prefix": "", "jetstream_event_prefix": "", "inbox_prefix": "", "user_jwt": "",
    "color_scheme": "", "tls_first": False,
}


@dataclass(frozen=True)
class ConnectDetails:
    servers: tuple[str, ...]
    user: str
    password: str

    def context(self, description: str) -> dict[str, Any]:
        return {**CONTEXT_FIELDS, "description": description, "url": ",".join(self.servers),
                "user": self.user, "password": self.password}


def context_dir() -> Path:
    """Where the `nats` CLI keeps its contexts: $XDG_CONFIG_HOME/nats/context, else
    ~/.config/nats/context."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "nats" / "context"


def app_user(settings: Settings) -> tuple[str, str]:
    """The forest's application user and password: from its secret, else the data dir."""
    from natsembed import Credentials, load_or_create

    if settings.cluster_secret is not None:
        creds = Credentials.derived(settings.cluster_secret.get_secret_value())
    else:
        path = settings.data_dir / CREDENTIALS_FILE
        if not path.is_file():
            fail(f"There are no NATS credentials at {path}: give the node's --data-dir "
                 "(NATS_DATA_DIR) or the forest's NATS_CLUSTER_SECRET.", EXIT_USAGE)
        try:
            creds = load_or_create(settings.data_dir)
        except (OSError, ValueError, TypeError) as exc:
            fail(f"The NATS credentials at {path} cannot be read: {exc}.")
    return creds.app_user, creds.app_password


def local_url(settings: Settings) -> str:
    host = settings.advertise_address or (
        "127.0.0.1" if settings.bind_address in WILDCARDS else settings.bind_address)
    host = f"[{host}]" if ":" in host else host
    return f"nats://{host}:{settings.client_port}"


async def reachable(url: str, user: str, password: str) -> bool:
    """Whether the server at `url` lets the application user in."""
    import nats

    async def quiet(exc: Exception) -> None:
        """nats-py's default error callback prints a traceback per refused attempt."""

    try:
        nc = await asyncio.wait_for(nats.connect(
            url, user=user, password=password, connect_timeout=2, max_reconnect_attempts=1,
            allow_reconnect=False, error_cb=quiet), 5)
    except (TimeoutError, OSError, nats.errors.Error):
        return False
    await nc.close()
    return True


@click.command("nats-context")
@click.option("--name", default=None, help="The context's name [default: the cluster name].")
@click.option("--url", "urls", multiple=True, metavar="nats://HOST:PORT",
              help="Another server to start from (repeatable), after this node's.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The node's data directory [NATS_DATA_DIR], holding its credentials.")
@click.option("--client-port", type=int, default=None, help="The node's client port [NATS_CLIENT_PORT].")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The node's settings file.")
@click.option("--context-dir", "target", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write it [default: the nats CLI's, ~/.config/nats/context].")
@click.option("--select", is_flag=True, help="Also make it the nats CLI's selected context.")
@click.option("--json", "as_json", is_flag=True, help="Print the connect details as JSON.")
def nats_context(name: str | None, urls: tuple[str, ...], data_dir: Path | None,
                 client_port: int | None, config: Path | None, target: Path | None,
                 select: bool, as_json: bool) -> None:
    """Write a context for the `nats` CLI and print how applications connect.

    Run it on a node's machine (it reads the node's settings, as `nimsforest run` does):
    the context holds the forest's application user and this node's URL (add others with
    --url); clients learn the cluster's other servers from the first one they reach.

    \b
    Example:
      nimsforest nats-context --data-dir .nimsforest/standalone   # after `make run`
      nats --context nimsforest stream ls
    """
    settings = settings_from(config, data_dir=data_dir, client_port=client_port)
    user, password = app_user(settings)
    url = local_url(settings)
    if not run_async(reachable(url, user, password)):
        click.echo(f"nimsforest: the node's NATS at {url} does not answer (or refuses these "
                   "credentials) now; the context is written all the same.", err=True)
    found = tuple(dict.fromkeys([url, *urls]))
    details = ConnectDetails(found, user, password)
    name = name or settings.cluster_name
    if "/" in name or name.startswith("."):
        fail(f"The context name '{name}' cannot contain '/' or start with '.'.", EXIT_USAGE)
    where = target or context_dir()
    path = where / f"{name}.json"
    text = json.dumps(details.context(f"NimsForest forest '{settings.cluster_name}'"), indent=2)
    from natsembed import write_private

    try:
        where.mkdir(parents=True, exist_ok=True)
        write_private(path, text + "\n")
        if select:
            (where.parent / "context.txt").write_text(name)
    except OSError as exc:
        fail(f"Cannot write {path}: {exc.strerror or exc}.")
    if as_json:
        click.echo(json.dumps({"context": name, "file": str(path), "servers": list(found),
                               "user": user, "password": password}, indent=2))
        return
    hosts = [s.removeprefix("nats://") for s in found]
    click.echo(f"Wrote the nats CLI context '{name}' to {path}.\n"
               f"  nats --context {name} stream ls\n\n"
               "Applications connect with the forest's application user:\n"
               f"  nats.py:  await nats.connect(servers={list(found)!r}, user={user!r}, "
               f"password={password!r})\n"
               f"  nats.js:  await connect({{ servers: {json.dumps(hosts)}, user: "
               f"{json.dumps(user)}, pass: {json.dumps(password)} }})\n"
               f"  NATS_URL=nats://{user}:{password}@{hosts[0]}")

__all__ = ["CONTEXT_FIELDS", "context_dir", "nats_context"]
