"""Generated credentials for a node's accounts and routes, kept in the data dir (0600)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("natsembed")

CREDENTIALS_FILE = "credentials.json"


@dataclass(frozen=True, repr=False)
class Credentials:
    """Users of the rendered config: an application user, a system user, a route user."""

    app_user: str
    app_password: str
    sys_user: str
    sys_password: str
    route_user: str
    route_password: str

    def __repr__(self) -> str:  # never print passwords
        return f"Credentials(app_user={self.app_user!r}, sys_user={self.sys_user!r}, route_user={self.route_user!r})"

    @classmethod
    def derived(cls, secret: str) -> Credentials:
        """The users every server and client of a forest agree on, from its secret alone
        (what a sidecar NATS rendered by `nimsforest nats-config` expects)."""
        unset = "-"
        return cls("app", unset, "sys", unset, "route", unset).with_cluster_secret(secret)

    def with_cluster_secret(self, secret: str | None) -> Credentials:
        """Credentials derived from a forest-wide secret, so every node agrees on them.

        Routes must authenticate across nodes, and a client that fails over from one node
        to another must find the same application user there: with a secret, the route,
        application and system passwords are all derived from it (HMAC-SHA256 per purpose).
        Without one, the node keeps its own random passwords (fine for a single node).
        """
        if not secret:
            return self

        def derive(purpose: str) -> str:
            return hmac.new(secret.encode(), f"nimsforest/{purpose}".encode(), hashlib.sha256).hexdigest()[:40]

        return Credentials(
            **{**asdict(self), "route_password": derive("route"), "app_password": derive("app"),
               "sys_password": derive("sys")}
        )


def _token() -> str:
    return secrets.token_urlsafe(24)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically with mode 0600."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_or_create(data_dir: Path) -> Credentials:
    """The node's credentials: read from `data_dir/credentials.json`, created on first use."""
    path = data_dir / CREDENTIALS_FILE
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning("Credentials file %s was readable by others; restricting it to 0600", path)
            path.chmod(0o600)
        raw = json.loads(path.read_text())
        return Credentials(**raw)
    creds = Credentials(
        app_user="app",
        app_password=_token(),
        sys_user="sys",
        sys_password=_token(),
        route_user="route",
        route_password=_token(),
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    write_private(path, json.dumps(asdict(creds), indent=2) + "\n")
    return creds
