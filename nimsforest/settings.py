"""Node settings: one typed model, filled from flags > environment > config file > defaults.

Every setting has a field name (used in the `--config` YAML file and in code), an
environment variable (the seeds' names: `NATS_NODE_NAME`, `REGISTRY_URL`, ...) and, for
most, a command-line flag. `load_settings()` is the one way to build it; a bad value
becomes a `SettingsError` whose message is one plain sentence naming the setting.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from natsembed import GENERATION_MARK, WITNESS_MARK
from nimsforest.durations import parse_duration
from nimsforest.validation import first_error

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SIZE_RE = re.compile(r"^\s*\d+(?:\.\d+)?\s*(?:[KMGT]B?|B)?\s*$", re.IGNORECASE)
_RATE_RE = re.compile(
    r"^\s*[0-9]+\s*(/|\s*per\s*)\s*([0-9]+\s*)?(second|minute|hour|day|month|year)s?\s*$", re.IGNORECASE
)


class SettingsError(ValueError):
    """A setting has a bad value; the message is one sentence meant for the user."""


def _check_size(value: str) -> str:
    if not _SIZE_RE.match(value):
        raise ValueError(f"'{value}' is not a size such as 256MB or 10GB")
    return value.strip().upper().replace(" ", "")


def check_name(value: str) -> str:
    """A node or cluster name, or ValueError with the reason (the rule of `Name`)."""
    if WITNESS_MARK in value:
        raise ValueError(f"'{value}' contains '{WITNESS_MARK}', which marks witness servers")
    if GENERATION_MARK in value:
        raise ValueError(f"'{value}' contains '{GENERATION_MARK}', which marks the server name of "
                         "a node that started afresh")
    if not NAME_RE.match(value):
        raise ValueError(
            f"'{value}' is not a valid name (letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 63 characters)"
        )
    return value


def _check_host(value: str) -> str:
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$", value):
        raise ValueError(f"'{value}' is not an IP address or host name")
    return value


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def parse_hostport(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """'host:port', '[v6]:port' or ':port' -> (host, port)."""
    value = value.strip()
    if value.startswith("http://") or value.startswith("https://"):
        value = value.split("://", 1)[1].rstrip("/")
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_s = rest.lstrip(":")
    else:
        host, sep, port_s = value.rpartition(":")
        if not sep:
            raise ValueError(f"'{value}' is not host:port")
    host = host or default_host
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"'{value}' has no valid port")
    return _check_host(host), int(port_s)


def local_http_url(value: str) -> str:
    """'host:port' of a listener -> the http:// URL a process on this machine uses to reach
    it (a wildcard bind is reached at 127.0.0.1). ValueError for a bad value."""
    host, port = parse_hostport(value)
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def api_headers() -> dict[str, str]:
    """What a client of the management API on this machine sends: the bearer token from
    NIMSFOREST_API_TOKEN when it is set."""
    token = os.environ.get("NIMSFOREST_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check_hostport(value: str) -> str:
    host, port = parse_hostport(value)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[str, AfterValidator(_check_size)]
Name = Annotated[str, AfterValidator(check_name)]
Host = Annotated[str, AfterValidator(_check_host)]
HostPort = Annotated[str, AfterValidator(_check_hostport)]
Port = Annotated[int, Field(ge=1, le=65535)]


def default_node_name() -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip("-.") or "node"
    return name[:63]


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/nimsforest")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "nimsforest"


def _env(name: str, **kw: Any) -> Any:
    """A field read from environment variable `name` (and from its field name in files)."""
    return Field(validation_alias=name, **kw)


ZONE_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
ZONE_TAG = "zone:"
ZONE_KEY = "zone"  # the registry entry's metadata key a node reads its zone from


def tags_with_zone(tags: list[str], zone: str | None) -> list[str]:
    """The server tags with the zone's tag `zone:<zone>` (unless a zone tag is given)."""
    if zone and not any(t.startswith(ZONE_TAG) for t in tags):
        return [*tags, f"{ZONE_TAG}{zone}"]
    return tags


class ZoneSource(enum.Enum):
    SETTING = "NIMSFOREST_ZONE"
    REGISTRY = "registry metadata"
    NONE = "none"


@dataclass(frozen=True)
class ZoneChoice:
    zone: str | None
    source: ZoneSource
    note: str | None = None  # one sentence to log: a registry zone refused or overridden


def choose_zone(setting: str | None, metadata: Mapping[str, str]) -> ZoneChoice:
    """A node's zone: NIMSFOREST_ZONE, else its registry entry's metadata `zone` (pure). A
    metadata zone that is not a valid zone name is ignored, with a sentence saying so."""
    given = metadata.get(ZONE_KEY)
    if setting:
        note = None
        if given and given != setting:
            note = (f"NIMSFOREST_ZONE is {setting}; the zone '{given[:64]}' in this node's "
                    "registry entry (metadata 'zone') is not used")
        return ZoneChoice(setting, ZoneSource.SETTING, note)
    if not given:
        return ZoneChoice(None, ZoneSource.NONE)
    if not re.match(ZONE_PATTERN, given):
        return ZoneChoice(None, ZoneSource.NONE,
                          f"The zone '{given[:64]}' in this node's registry entry (metadata "
                          "'zone') is not a zone name (lower-case letters, digits, '.', '_', "
                          "'-'; at most 63): the node runs without a zone")
    return ZoneChoice(given, ZoneSource.REGISTRY)


def with_zone(settings: Settings, zone: str) -> Settings:
    """`settings` with `zone` (and its server tag), as if NIMSFOREST_ZONE had said it."""
    return settings.model_copy(update={
        "zone": zone, "server_tags": tags_with_zone(list(settings.server_tags), zone)})


class Settings(BaseSettings):
    """Everything a node needs to know. Immutable once loaded."""

    model_config = SettingsConfigDict(
        frozen=True,
        populate_by_name=True,
        case_sensitive=False,
        extra="ignore",
    )

    # --- node and embedded NATS -------------------------------------------------------
    node_name: Name = _env("NATS_NODE_NAME", default_factory=default_node_name)
    data_dir: Path = _env("NATS_DATA_DIR", default_factory=default_data_dir)
    client_port: Port = _env("NATS_CLIENT_PORT", default=4222)
    cluster_port: Port = _env("NATS_CLUSTER_PORT", default=6222)
    monitor_port: int = _env("NATS_MONITOR_PORT", default=8222, ge=0, le=65535)
    cluster_name: Name = _env("NATS_CLUSTER_NAME", default="nimsforest")
    bind_address: Host = _env("NATS_BIND_ADDRESS", default="0.0.0.0")
    advertise_address: Host | None = _env("NATS_ADVERTISE_ADDRESS", default=None)
    cluster_secret: SecretStr | None = _env("NATS_CLUSTER_SECRET", default=None)
    # the node's failure zone: becomes the server tag zone:<zone> (replicas in distinct zones)
    zone: str | None = _env("NIMSFOREST_ZONE", default=None, pattern=ZONE_PATTERN)
    server_tags: Annotated[list[str], NoDecode, BeforeValidator(_split_csv)] = _env(
        "NATS_SERVER_TAGS", default_factory=list
    )
    jetstream_max_mem: Size = _env("JETSTREAM_MAX_MEM", default="256MB")
    jetstream_max_file: Size = _env("JETSTREAM_MAX_FILE", default="10GB")
    nats_server_bin: Path | None = _env("NATS_SERVER_BIN", default=None)
    nats_max_restarts: int = _env("NATS_MAX_RESTARTS", default=5, ge=0)
    nats_restart_window: Duration = _env("NATS_RESTART_WINDOW", default=60.0)
    nats_start_timeout: Duration = _env("NATS_START_TIMEOUT", default=60.0)
    nats_stop_timeout: Duration = _env("NATS_STOP_TIMEOUT", default=10.0)

    # --- sidecar mode (an existing NATS instead of an embedded one) ----------------------
    nats_url: str | None = _env("NATS_URL", default=None)
    nats_retry_attempts: int = _env("NATS_RETRY_ATTEMPTS", default=10, ge=0)
    nats_retry_interval: Duration = _env("NATS_RETRY_INTERVAL", default=5.0)
    nats_reconnect_wait: Duration = _env("NATS_RECONNECT_WAIT", default=2.0)
    nats_max_reconnects: int = _env("NATS_MAX_RECONNECTS", default=-1, ge=-1)

    # --- registry ------------------------------------------------------------------------
    registry_url: str | None = _env("REGISTRY_URL", default=None)
    registry_service: Name = _env("REGISTRY_SERVICE_NAME", default="nimsforest")
    registry_heartbeat_interval: Duration = _env("REGISTRY_HEARTBEAT_INTERVAL", default=10.0)
    registry_token: SecretStr | None = _env("REGISTRY_TOKEN", default=None)

    # --- cluster manager -----------------------------------------------------------------
    peer_grace_period: Duration = _env("CLUSTER_PEER_GRACE_PERIOD", default=300.0)
    reconcile_interval: Duration = _env("CLUSTER_RECONCILE_INTERVAL", default=1.0)
    # automation never removes a peer (or rescues a quorum) leaving fewer voting nodes
    min_quorum: int = _env("NIMSFOREST_MIN_QUORUM", default=3, ge=1)
    # a joining node gets replicas once it has been reachable this long
    stabilisation_time: Duration = _env("CLUSTER_STABILISATION_TIME", default=10.0)
    # a graceful stop of a cluster node drains first, for at most this long
    drain_timeout: Duration = _env("NIMSFOREST_DRAIN_TIMEOUT", default=15.0)

    # --- management API and forest --------------------------------------------------------
    api_address: HostPort = _env("NIMSFOREST_API", default="127.0.0.1:8080")
    api_token: SecretStr | None = _env("NIMSFOREST_API_TOKEN", default=None)
    # changes through the management API, per client address (a `limits` rate string)
    api_rate_limit: str = _env("NIMSFOREST_API_RATE_LIMIT", default="60/minute")
    forest_config: Path | None = _env("FOREST_CONFIG", default=None)
    # how long a River input is held (asked again) while the River cannot store it
    river_hold: Duration = _env("NIMSFOREST_RIVER_HOLD", default=15.0)
    log_level: str = _env("NIMSFOREST_LOG_LEVEL", default="info")

    @field_validator("server_tags")
    @classmethod
    def _add_zone(cls, v: list[str], info: ValidationInfo) -> list[str]:
        return tags_with_zone(v, info.data.get("zone"))

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, v: str) -> str:
        v = v.lower()
        if v not in ("debug", "info", "warning", "error"):
            raise ValueError(f"'{v}' is not one of debug, info, warning, error")
        return v

    @field_validator("api_rate_limit")
    @classmethod
    def _check_rate(cls, v: str) -> str:
        # The syntax of the `limits` package, which parses it in the control plane; checked
        # here by pattern so that loading settings does not import it before nats-server runs.
        if not _RATE_RE.match(v):
            raise ValueError(f"'{v}' is not a rate such as 60/minute or 10/second")
        return v.strip()

    @field_validator("registry_url")
    @classmethod
    def _check_registry_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not re.match(r"^(https?|file|memory)://", v):
            raise ValueError(f"'{v}' must start with http://, https://, file:// or memory://")
        return v

    @field_validator("nats_url")
    @classmethod
    def _check_nats_url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        for part in v.split(","):
            if not re.match(r"^(nats|tls|ws|wss)://[^\s]+$", part.strip()):
                raise ValueError(f"'{v}' is not a NATS URL such as nats://localhost:4222")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # flags (init kwargs) > environment > config file > defaults
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))

    # --- derived values --------------------------------------------------------------------
    @property
    def api_host_port(self) -> tuple[str, int]:
        return parse_hostport(self.api_address)

    @property
    def api_url(self) -> str:
        return local_http_url(self.api_address)


def env_name(field: str) -> str:
    alias = Settings.model_fields[field].validation_alias
    return str(alias) if alias else field.upper()


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the YAML file named by `--config` (keys: field names or env names)."""

    path: Path | None = None  # set by load_settings for the duration of one load

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns everything at once

    def __call__(self) -> dict[str, Any]:
        path = _ConfigFileSource.path
        if path is None:
            return {}
        try:
            data = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise SettingsError(f"Config file {path} does not exist.") from None
        except (OSError, yaml.YAMLError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise SettingsError(f"Config file {path} cannot be read: {first}.") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise SettingsError(f"Config file {path} must be a mapping of setting: value.")
        by_env = {env_name(f).lower(): f for f in Settings.model_fields}
        out: dict[str, Any] = {}
        for key, value in data.items():
            k = str(key).lower().replace("-", "_")
            field = k if k in Settings.model_fields else by_env.get(k)
            if field is None:
                raise SettingsError(f"Config file {path} has an unknown setting '{key}'.")
            out[field] = value
        return out


def _describe(field: str) -> str:
    flag = FLAG_NAMES.get(field)
    where = env_name(field) + (f" / {flag}" if flag else "")
    return f"{field} ({where})"


# field -> the command-line flag that sets it (for error messages).
FLAG_NAMES: dict[str, str] = {
    "node_name": "--node-name",
    "data_dir": "--data-dir",
    "client_port": "--client-port",
    "cluster_port": "--cluster-port",
    "monitor_port": "--monitor-port",
    "cluster_name": "--cluster-name",
    "bind_address": "--bind",
    "advertise_address": "--advertise",
    "cluster_secret": "--cluster-secret",
    "nats_server_bin": "--nats-server-bin",
    "nats_url": "--nats-url",
    "registry_url": "--registry-url",
    "registry_service": "--registry-service",
    "api_address": "--api",
    "forest_config": "--forest-config",
    "log_level": "--log-level",
    "peer_grace_period": "--peer-grace-period",
}


def load_settings(
    config_file: Path | None = None, *, defaults: dict[str, Any] | None = None, **flags: Any
) -> Settings:
    """Build Settings from flags (None values are ignored), env, the config file, defaults.

    `defaults` replaces built-in defaults for this command only (standalone binds
    127.0.0.1); any flag, variable or file entry still wins over them.

    Raises SettingsError with one plain sentence when anything is wrong.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    _ConfigFileSource.path = config_file
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        err = first_error(exc)
        assert err is not None  # a ValidationError has at least one error
        field = err.loc[0] if err.loc else "?"
        if field not in Settings.model_fields:  # alias in loc
            field = next(
                (f for f in Settings.model_fields if env_name(f).lower() == field.lower()), field
            )
        msg = err.message
        value = err.input
        shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
        label = _describe(field) if field in Settings.model_fields else field
        raise SettingsError(f"Invalid setting {label}: {msg}{shown}.") from None
    finally:
        _ConfigFileSource.path = None
    unset = {k: v for k, v in (defaults or {}).items() if k not in settings.model_fields_set}
    if unset:
        settings = settings.model_copy(update=unset)
    if settings.monitor_port and settings.monitor_port in (settings.client_port, settings.cluster_port):
        raise SettingsError("NATS_CLIENT_PORT, NATS_CLUSTER_PORT and NATS_MONITOR_PORT must differ.")
    if settings.client_port == settings.cluster_port:
        raise SettingsError("NATS_CLIENT_PORT, NATS_CLUSTER_PORT and NATS_MONITOR_PORT must differ.")
    return settings


def redact(url: str) -> str:
    """NATS URL(s) without user:password parts, for logs."""
    out = []
    for s in url.split(","):
        s = s.strip()
        if "@" in s:
            scheme, _, rest = s.partition("://")
            s = f"{scheme}://***@{rest.split('@', 1)[1]}"
        out.append(s)
    return ", ".join(out)


__all__ = [
    "Settings",
    "SettingsError",
    "api_headers",
    "redact",
    "check_name",
    "load_settings",
    "local_http_url",
    "parse_duration",
    "parse_hostport",
    "env_name",
    "NAME_RE",
    "ZONE_KEY",
    "ZONE_PATTERN",
    "ZoneChoice",
    "ZoneSource",
    "choose_zone",
    "tags_with_zone",
    "with_zone",
]
