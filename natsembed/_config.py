"""nats.conf as a typed model, rendered from a jinja2 template, checked, written atomically."""

from __future__ import annotations

import asyncio
import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from natsembed._credentials import Credentials, write_private
from natsembed.errors import ConfigInvalid

if TYPE_CHECKING:
    import jinja2

_FROZEN = ConfigDict(frozen=True, arbitrary_types_allowed=True)
SYSTEM_ACCOUNT = "SYS"  # also the name of the system account's directory in the store
APP_ACCOUNT = "APP"


def hostport(host: str, port: int) -> str:
    """'host:port' with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


_SIZE = r"^\d+(\.\d+)?([KMGT]B?|B)?$"


class JetStreamConfig(BaseModel):
    model_config = _FROZEN
    store_dir: Path
    max_mem: str = Field(default="256MB", pattern=_SIZE)  # rendered unquoted: 256MB
    max_file: str = Field(default="10GB", pattern=_SIZE)
    # replicas of a stream on servers with distinct values of tags with this prefix
    # (nats-server reads it at start only)
    unique_tag: str | None = None


class TLSConfig(BaseModel):
    model_config = _FROZEN
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None


class ClusterConfig(BaseModel):
    model_config = _FROZEN
    name: str
    listen: str  # host:port
    advertise: str | None = None  # host:port other servers should dial
    routes: tuple[str, ...] = ()  # peers' cluster addresses, host:port
    authorize: bool = True  # require the route user on incoming routes
    tls: TLSConfig | None = None  # TLS on routes (nats-server verifies peers' certificates)


class ServerConfig(BaseModel):
    """Everything nats-server is told; the one input of `render_config`."""

    model_config = _FROZEN
    server_name: str
    client_listen: str  # host:port
    client_advertise: str | None = None
    monitor_listen: str | None = None  # host:port, None = no monitoring
    tags: tuple[str, ...] = ()
    jetstream: JetStreamConfig
    cluster: ClusterConfig
    credentials: Credentials
    tls: TLSConfig | None = None
    lame_duck_grace_period: str = "1s"
    max_payload: int = 1024 * 1024

    @property
    def route_urls(self) -> list[str]:
        """Every route, deduplicated, with route credentials when routes are authorized."""
        seen: list[str] = []
        for r in self.cluster.routes:
            if r not in seen and r != self.cluster.advertise:
                seen.append(r)
        if self.cluster.authorize:
            creds = f"{self.credentials.route_user}:{self.credentials.route_password}@"
        else:
            creds = ""
        return [f"nats-route://{creds}{r}" for r in seen]


def _quote(value: object) -> str:
    # JSON string syntax is valid nats.conf string syntax, and escapes everything.
    return json.dumps(str(value))


@functools.cache
def _template() -> jinja2.Template:
    """The nats.conf template, compiled at the first render.

    jinja2 is imported here, not with the package: what imports natsembed only to spawn
    or watch (the stack supervisor, the CLI) does not pay for it."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("natsembed", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=False,
    )
    env.filters["q"] = _quote
    return env.get_template("nats.conf.j2")


def render_config(config: ServerConfig, generator: str = "natsembed") -> str:
    """The nats.conf text for `config`."""
    return _template().render(
        c=config, generator=generator, system_account=SYSTEM_ACCOUNT, app_account=APP_ACCOUNT
    )


async def check_config(binary: Path, text: str, workdir: Path) -> None:
    """Ask `nats-server -t` whether `text` is a valid config; raise ConfigInvalid if not."""
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".check-{os.getpid()}-{id(text)}.conf"
    write_private(probe, text)
    try:
        proc = await asyncio.create_subprocess_exec(
            str(binary), "-t", "-c", str(probe),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
    finally:
        probe.unlink(missing_ok=True)
    if proc.returncode != 0:
        message = out.decode(errors="replace").strip().splitlines()
        detail = message[-1] if message else f"exit code {proc.returncode}"
        detail = detail.replace(str(probe), "config").removeprefix("nats-server: ")
        raise ConfigInvalid(f"nats-server refused the generated configuration: {detail}")


async def write_config(binary: Path, path: Path, text: str) -> None:
    """Check `text` with `nats-server -t`, then write it to `path` atomically (0600)."""
    await check_config(binary, text, path.parent)
    write_private(path, text)
