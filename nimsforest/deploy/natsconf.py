"""A sidecar nats.conf: the supervisor's template, for a nats-server run by systemd.

In sidecar mode each machine runs a plain `nats-server -c /etc/nats/nats.conf`
(nats.service) and NimsForest connects to it on 127.0.0.1. The file is rendered by the
same `natsembed.render_config` the embedded supervisor uses, so both modes agree on
accounts, placement tags and route authorization, and it is always checked with
`nats-server -t` before anyone sees it.

A sidecar server has no witness: a clustered JetStream server with no route to another
server cannot serve at all, so a sidecar cluster needs at least two servers, and three to
keep a quorum after losing one. `SidecarSpec` therefore refuses a config without a peer.

Users and route credentials are derived from the forest-wide secret exactly as an
embedded node derives them (`Credentials.with_cluster_secret`): user `app` for clients,
`sys` for the system account, `route` for routes, each password an HMAC of the secret.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from natsembed import (
    NODE_TAG,
    ClusterConfig,
    Credentials,
    JetStreamConfig,
    ServerConfig,
    TLSConfig,
    check_config,
    hostport,
    render_config,
    server_name,
    write_config,
)
from nimsforest.settings import Host, Name, Port, Size, parse_hostport
from nimsforest.validation import first_error

GENERATOR = "nimsforest nats-config"


class SidecarError(ValueError):
    """A bad sidecar option; the message is one sentence meant for the user."""


class SidecarSpec(BaseModel):
    """Everything `nimsforest nats-config` is told. Immutable."""

    model_config = ConfigDict(frozen=True)

    node_name: Name
    cluster_peers: tuple[str, ...]
    secret: SecretStr
    cluster_name: Name = "nimsforest"
    bind: Host = "0.0.0.0"  # cluster and monitoring listeners
    client_bind: Host = "127.0.0.1"  # the application is local in a sidecar
    advertise: Host | None = None
    client_port: Port = 4222
    cluster_port: Port = 6222
    monitor_port: int = Field(default=8222, ge=0, le=65535)  # 0: no monitoring
    store_dir: Path = Path("/var/lib/nats/jetstream")
    max_mem: Size = "256MB"
    max_file: Size = "10GB"
    tags: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    client_tls: bool = False

    @field_validator("cluster_peers", mode="before")
    @classmethod
    def _peers(cls, value: object) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        out: list[str] = []
        for item in (str(i).strip() for i in items):
            if not item:
                continue
            host, port = parse_hostport(item, default_host="")
            addr = hostport(host, port)
            if addr not in out:
                out.append(addr)
        return tuple(out)

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("the secret is empty")
        return value

    @property
    def cluster_address(self) -> str | None:
        """The address peers dial for this server, when it is known."""
        return hostport(self.advertise, self.cluster_port) if self.advertise else None

    @property
    def routes(self) -> tuple[str, ...]:
        """The peers, without this server's own advertised address."""
        return tuple(p for p in self.cluster_peers if p != self.cluster_address)


def make_spec(**values: object) -> SidecarSpec:
    """A SidecarSpec from option values; SidecarError (one sentence) when one is bad."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        spec = SidecarSpec(**given)
    except ValidationError as exc:
        err = first_error(exc)
        assert err is not None  # a ValidationError has at least one error
        field = err.loc[0] if err.loc else "?"
        if err.type == "missing":
            raise SidecarError(f"The option {_flag(field)} is required.") from None
        raise SidecarError(f"Invalid {_flag(field)}: {err.message}.") from None
    if not spec.routes:
        raise SidecarError(
            "A sidecar nats-server needs at least one other server in --cluster-peers: "
            "a clustered JetStream server without a route to a peer cannot serve."
        )
    if (spec.tls_cert is None) != (spec.tls_key is None):
        raise SidecarError("--tls-cert and --tls-key go together.")
    if spec.client_tls and spec.tls_cert is None:
        raise SidecarError("--client-tls needs --tls-cert and --tls-key.")
    ports = [spec.client_port, spec.cluster_port] + ([spec.monitor_port] if spec.monitor_port else [])
    if len(set(ports)) != len(ports):
        raise SidecarError("The client, cluster and monitoring ports must differ.")
    return spec


# the flag that sets a field, where it is not --field-name
_FLAGS = {"secret": "--cluster-secret (or NATS_CLUSTER_SECRET)", "tags": "--tag"}


def _flag(field: str) -> str:
    return _FLAGS.get(field, f"--{field.replace('_', '-')}")


def credentials(secret: SecretStr) -> Credentials:
    """The users every server and client of the forest agree on, derived from `secret`."""
    return Credentials.derived(secret.get_secret_value())


def server_config(spec: SidecarSpec) -> ServerConfig:
    tls = (
        TLSConfig(cert_file=spec.tls_cert, key_file=spec.tls_key, ca_file=spec.tls_ca)
        if spec.tls_cert is not None and spec.tls_key is not None
        else None
    )
    advertise = spec.advertise
    return ServerConfig(
        server_name=server_name(spec.node_name),  # a sidecar never starts afresh: generation 0
        client_listen=hostport(spec.client_bind, spec.client_port),
        client_advertise=hostport(advertise, spec.client_port) if advertise else None,
        monitor_listen=hostport(spec.bind, spec.monitor_port) if spec.monitor_port else None,
        tags=tuple(dict.fromkeys((NODE_TAG, *spec.tags))),
        jetstream=JetStreamConfig(store_dir=spec.store_dir, max_mem=spec.max_mem, max_file=spec.max_file),
        cluster=ClusterConfig(
            name=spec.cluster_name,
            listen=hostport(spec.bind, spec.cluster_port),
            advertise=spec.cluster_address,
            routes=spec.routes,
            authorize=True,
            tls=tls,
        ),
        credentials=credentials(spec.secret),
        tls=tls if spec.client_tls else None,
    )


def render(spec: SidecarSpec) -> str:
    """The nats.conf text (not checked; use `render_checked` or `write`)."""
    return render_config(server_config(spec), generator=GENERATOR)


async def render_checked(spec: SidecarSpec, binary: Path) -> str:
    """The nats.conf text, accepted by `nats-server -t` (natsembed.ConfigInvalid if not)."""
    text = render(spec)
    with tempfile.TemporaryDirectory(prefix="nimsforest-nats-config-") as tmp:
        await check_config(binary, text, Path(tmp))
    return text


async def write(spec: SidecarSpec, binary: Path, path: Path) -> str:
    """Check with `nats-server -t`, then write `path` atomically with mode 0600."""
    text = render(spec)
    await write_config(binary, path, text)  # creates path's folder (nats-server -t runs there)
    return text


__all__ = ["SidecarError", "SidecarSpec", "credentials", "make_spec", "render", "render_checked",
           "server_config", "write"]
