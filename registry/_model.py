"""Typed values: NodeInfo, peer events and the registry status snapshot."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
NAME_RULE = (
    "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 63 characters"
)


def check_name(value: str, what: str = "node name") -> str:
    """Return `value` if it is a valid node or service name, else raise ValueError."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a valid {what} ({NAME_RULE})")
    return value


def format_hostport(host: str, port: int) -> str:
    """('::1', 6222) -> '[::1]:6222'; ('10.0.0.1', 6222) -> '10.0.0.1:6222'."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_host(host: str, original: str) -> str:
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    if not _HOSTNAME_RE.match(host):
        raise ValueError(f"'{original}' does not start with an IP address or host name")
    return host


def split_hostport(value: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); raise ValueError with a sentence."""
    if not isinstance(value, str):
        raise ValueError("an address must be a string such as 10.0.0.1:6222")
    text = value.strip()
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or not rest.startswith(":"):
            raise ValueError(f"'{value}' is not [IPv6]:port")
        port_s = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"'{value}' does not hold an IPv6 address inside the brackets"
            ) from None
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"'{value}' is not host:port")
        if ":" in host:
            raise ValueError(f"'{value}' needs brackets around the IPv6 address, as in [::1]:6222")
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"'{value}' has no valid port (1-65535)")
    return _check_host(host, value), int(port_s)


def _normal_hostport(value: str) -> str:
    return format_hostport(*split_hostport(value))


MAX_METADATA_KEY = 128


def check_metadata(values: Mapping[str, str]) -> dict[str, str]:
    """`values` as a dict if every key is a valid metadata key, else ValueError (one sentence).

    The one place of the rule: a node's own metadata (NodeInfo), an operator's metadata
    (the registry server's metadata routes, the CLI) and a restored state file use it.
    """
    for key in values:
        if not isinstance(key, str) or not key or len(key) > MAX_METADATA_KEY:
            raise ValueError(f"metadata keys must be 1 to {MAX_METADATA_KEY} characters long")
    return dict(values)


Metadata = Annotated[dict[str, str], AfterValidator(check_metadata)]
"""Metadata of a node: string keys (1 to 128 characters) to string values."""


def merge_metadata(operator: Mapping[str, str], own: Mapping[str, str]) -> dict[str, str]:
    """The metadata a node's record carries (pure): the operator's keys with the node's own
    on top; a node's key with an empty value gives way to the operator's value."""
    merged = dict(operator)
    merged.update((k, v) for k, v in own.items() if v or k not in operator)
    return merged


def edit_metadata(current: Mapping[str, str], changes: Mapping[str, str]) -> dict[str, str]:
    """`current` with `changes` merged in (pure); a key with an empty value is removed."""
    edited = dict(current)
    for key, value in changes.items():
        if value:
            edited[key] = value
        else:
            edited.pop(key, None)
    return edited


class NodeInfo(BaseModel):
    """One node as the registry knows it.

    `name` and `cluster_address` are required. `registered_at` and `create_index` are set
    by the registry and ignored when a node registers. `node_id` is the stable id a node
    keeps in its data dir: a registration whose name is held by a live record with a
    different node id is a conflict; the same node id takes the record over.

    `create_index` is strictly increasing over first registrations (per name + node id)
    and is kept when the same node re-registers while its record is alive, so "the live
    node with the lowest create_index" is the oldest member (the founder rule).

    Also accepted on input (the design card's minimal shape): `address` + `port`
    instead of `cluster_address`.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    cluster_address: str
    client_address: str | None = None
    monitor_url: str | None = None
    api_url: str | None = None
    node_id: str | None = None
    registered_at: datetime | None = None
    create_index: int | None = Field(default=None, ge=0)
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _address_and_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("cluster_address") is None and "address" in data:
            address, port = data.get("address"), data.get("port")
            if not isinstance(address, str) or not address:
                raise ValueError("'address' must be a host name or IP address")
            if isinstance(port, bool) or not isinstance(port, int):
                raise ValueError("'port' must be a whole number when 'address' is given")
            host = address.strip().strip("[]")
            data = {**data, "cluster_address": format_hostport(host, port)}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("cluster_address", "client_address")
    @classmethod
    def _hostport(cls, v: str | None) -> str | None:
        return None if v is None else _normal_hostport(v)

    @field_validator("monitor_url", "api_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not re.match(r"^https?://[^\s/]+", v) or len(v) > 2048:
            raise ValueError(f"'{v[:80]}' is not an http:// or https:// URL")
        return v

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str | None) -> str | None:
        if v is not None and not NODE_ID_RE.match(v):
            raise ValueError(
                f"'{v[:80]}' is not a valid node id (letters, digits, '.', '_', ':' and '-', "
                "at most 128 characters)"
            )
        return v

    @property
    def host(self) -> str:
        """The cluster host (IPv6 without brackets)."""
        return split_hostport(self.cluster_address)[0]

    @property
    def port(self) -> int:
        """The cluster port."""
        return split_hostport(self.cluster_address)[1]

    def identity(self) -> tuple[Any, ...]:
        """What makes two records "the same peer" for watch events.

        Name, node id and cluster address: a change of any of them is REMOVED + ADDED.
        Other fields (metadata, URLs, create_index, registered_at) are not peer changes.
        """
        return (self.name, self.node_id, self.cluster_address)


class MetadataBody(BaseModel):
    """The body of `PUT` / `PATCH .../nodes/{name}/metadata`: `{"metadata": {KEY: VALUE}}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metadata: Metadata


class OperatorMetadata(BaseModel):
    """What an operator gave one node of a service, apart from what the node registers.

    A node's record carries `merge_metadata(operator, own)`; the operator's metadata is
    kept when the node deregisters, expires or has not registered yet.
    """

    model_config = ConfigDict(frozen=True)

    service: str
    name: str
    metadata: Metadata = Field(default_factory=dict)


class PeerEventType(StrEnum):
    ADDED = "added"
    REMOVED = "removed"


class PeerEvent(BaseModel):
    """A peer joined (ADDED) or left (REMOVED) the service, as seen by watch_peers()."""

    model_config = ConfigDict(frozen=True)

    type: PeerEventType
    node: NodeInfo


class RegistryState(StrEnum):
    """Where this node stands with the registry (see RegistryStatus)."""

    NOT_REGISTERED = "not_registered"  # register() not called yet, or deregistered
    REGISTERED = "registered"  # the last register/heartbeat succeeded
    UNREACHABLE = "unreachable"  # the last exchange failed: network, timeout, bad answer
    CONFLICT = "conflict"  # our name is held by another live node
    REJECTED = "rejected"  # bad token or input: fix the setup
    CLOSED = "closed"  # close() was called


class RegistryStatus(BaseModel):
    """A snapshot of the client's view, cheap to read (no I/O): for health endpoints."""

    model_config = ConfigDict(frozen=True)

    url: str
    service: str
    backend: str
    state: RegistryState
    connected: bool
    node: str | None
    create_index: int | None
    last_heartbeat: datetime | None
    last_error: str | None
    peers_cached: bool
    heartbeat_interval: float
    ttl_seconds: float


__all__ = [
    "NAME_RE",
    "Metadata",
    "MetadataBody",
    "OperatorMetadata",
    "check_metadata",
    "edit_metadata",
    "merge_metadata",
    "NodeInfo",
    "PeerEvent",
    "PeerEventType",
    "RegistryState",
    "RegistryStatus",
    "check_name",
    "format_hostport",
    "split_hostport",
]
