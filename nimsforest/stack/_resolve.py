"""Manifests (plus the environment) -> the desired services: ONE pure function, `resolve`.

It is called at start-up and again whenever the topology may have changed (reload,
SIGHUP, a manifest edited). Everything it needs comes in as arguments (the manifests, an
environment mapping, the stack's paths and a binary lookup), so the same inputs always
give the same `Desired`; it starts nothing and writes nothing.

Placeholders, in any string of `process` (command, args, env, probes):

    ${dep.NAME}           the path of binary NAME declared by this manifest
    ${data}  ${stack}     the data folder (.data/) and the generated-files folder
    ${env.VAR}            environment variable VAR; ${env.VAR:-default} when it may be unset
    ${port.NAME}          this service's port NAME; ${port.SERVICE.NAME} another service's
"""

from __future__ import annotations

import enum
import functools
import graphlib
import importlib.metadata
import os
import re
import sysconfig
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nimsforest.stack import _caddy
from nimsforest.stack._manifest import (
    Availability,
    Binary,
    Condition,
    Manifest,
    Port,
    Probe,
    Route,
    Shutdown,
    parse_manifest,
)
from nimsforest.stack.errors import ManifestInvalid

DATA_DIR = ".data"
STACK_DIR = ".nimsforest-stack"
DEFAULT_SERVICES = Path(__file__).with_name("services")

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_COLLECTION = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class BinaryMissing(enum.Enum):
    NOT_INSTALLED = "not installed"
    NOT_SHIPPED = "ships no such executable"


BinaryLookup = Callable[[Binary], "Path | BinaryMissing"]


@dataclass(frozen=True)
class StackPaths:
    """Where a stack lives: its manifests, its data (.data/) and generated files."""

    root: Path
    services: Path
    data: Path
    stack: Path

    @classmethod
    def for_root(cls, root: Path, services: Path | None = None) -> StackPaths:
        root = root.absolute()
        if services is None:
            services = root / "services" if (root / "services").is_dir() else DEFAULT_SERVICES
        return cls(root, services.absolute(), root / DATA_DIR, root / STACK_DIR)

    @property
    def logs(self) -> Path:
        return self.stack / "logs"


@dataclass(frozen=True)
class GeneratedFile:
    """A file the stack writes before the service starts (e.g. Caddy's JSON config)."""

    path: Path
    text: str


@dataclass(frozen=True, repr=False)
class CollectionSource:
    """Where more desired services come from: a PocketBase collection, read as a superuser."""

    url: str
    collection: str
    email: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"CollectionSource({self.url!r}, {self.collection!r})"


@dataclass(frozen=True)
class ServiceSpec:
    """One resolved service: what to run, how to know it is healthy, what it waits for."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    ports: tuple[tuple[str, Port], ...]
    readiness: Probe | None
    liveness: Probe | None
    depends_on: tuple[tuple[str, Condition], ...]
    availability: Availability
    shutdown: Shutdown
    config_file: GeneratedFile | None = None
    reload_url: str | None = None  # POST the config file here to apply it live (Caddy /load)
    services_from: CollectionSource | None = None  # this PocketBase holds more services

    def without_config(self) -> ServiceSpec:
        """The spec with its live-reloadable config left out (compared to decide a restart)."""
        if self.reload_url is None or self.config_file is None:
            return self
        return replace(self, config_file=GeneratedFile(self.config_file.path, ""))


@dataclass(frozen=True)
class Desired:
    """The desired services in dependency order (each after everything it depends on)."""

    services: tuple[ServiceSpec, ...] = field(default_factory=tuple)

    def by_name(self) -> dict[str, ServiceSpec]:
        return {s.name: s for s in self.services}

    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.services)

    def collection_source(self) -> tuple[str, CollectionSource] | None:
        """The service whose PocketBase collection holds more services, and where it is."""
        return next(((s.name, s.services_from) for s in self.services if s.services_from), None)


@functools.lru_cache(maxsize=64)
def find_binary(binary: Binary) -> Path | BinaryMissing:
    """The executable `binary.name` installed by distribution `binary.package`.

    Cached per process: looking a distribution up scans the import path."""
    try:
        dist = importlib.metadata.distribution(binary.package)
    except importlib.metadata.PackageNotFoundError:
        return BinaryMissing.NOT_INSTALLED
    scripts = Path(sysconfig.get_path("scripts"))
    is_script = any(ep.group == "console_scripts" and ep.name == binary.name
                    for ep in dist.entry_points)
    if is_script and (scripts / binary.name).is_file():
        return scripts / binary.name
    for f in dist.files or ():
        if f.name == binary.name and f.parent.name in ("bin", "Scripts"):
            path = Path(str(dist.locate_file(f))).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    return BinaryMissing.NOT_SHIPPED


def _source(name: str) -> str:
    return f"services/{name}/service.json"


class _Substitution:
    def __init__(self, name: str, manifests: Mapping[str, Manifest], env: Mapping[str, str],
                 paths: StackPaths, binaries: Mapping[str, Path]) -> None:
        self.name, self.manifests, self.env = name, manifests, env
        self.paths, self.binaries = paths, binaries

    def one(self, expr: str) -> str:
        src = _source(self.name)
        head, _, rest = expr.partition(".")
        if expr == "data":
            return str(self.paths.data)
        if expr == "stack":
            return str(self.paths.stack)
        if expr == "root":
            return str(self.paths.root)
        if head == "dep" and rest:
            if rest not in self.binaries:
                raise ManifestInvalid(f"{src}: ${{dep.{rest}}} names no binary of this manifest.")
            return str(self.binaries[rest])
        if head == "env" and rest:
            var, sep, default = rest.partition(":-")
            value = self.env.get(var)
            if value is None or (value == "" and sep):
                if not sep:
                    raise ManifestInvalid(
                        f"{src}: environment variable {var} is not set (write it in .env, "
                        f"or use ${{env.{var}:-default}})."
                    )
                return default
            return value
        if head == "port" and rest:
            parts = rest.split(".")
            service, port = (self.name, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
            if len(parts) > 2 or service not in self.manifests:
                raise ManifestInvalid(f"{src}: ${{port.{rest}}} names no service.")
            ports = self.manifests[service].ports
            if port not in ports:
                raise ManifestInvalid(f"{src}: service {service} has no port '{port}'.")
            return str(ports[port].port)
        raise ManifestInvalid(f"{src}: unknown placeholder ${{{expr}}}.")

    def text(self, value: str) -> str:
        return _PLACEHOLDER.sub(lambda m: self.one(m.group(1)), value)

    def tree(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.tree(v) for v in value]
        if isinstance(value, dict):
            return {k: self.tree(v) for k, v in value.items()}
        return value


def _order(manifests: Mapping[str, Manifest]) -> tuple[str, ...]:
    graph: dict[str, list[str]] = {}
    for name, m in sorted(manifests.items()):
        for dep in m.process.compose.depends_on:
            if dep not in manifests:
                raise ManifestInvalid(f"{_source(name)}: depends_on names '{dep}', which has no manifest.")
            if dep == name:
                raise ManifestInvalid(f"{_source(name)}: the service depends on itself.")
        graph[name] = sorted(m.process.compose.depends_on)
    try:
        return tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        cycle = list(exc.args[1])
        raise ManifestInvalid(f"depends_on forms a cycle: {' -> '.join(reversed(cycle))}.") from None


def _check_ports(manifests: Mapping[str, Manifest]) -> None:
    seen: dict[int, str] = {}
    for name, m in sorted(manifests.items()):
        for port_name, port in sorted(m.ports.items()):
            owner = seen.get(port.port)
            if owner is not None:
                raise ManifestInvalid(
                    f"Two services on one port: {owner} and {name} ({port_name}) both use port {port.port}."
                )
            seen[port.port] = f"{name} ({port_name})"


def _front_door(name: str, m: Manifest, manifests: Mapping[str, Manifest], sub: _Substitution,
                paths: StackPaths) -> tuple[GeneratedFile, str] | None:
    door = m.config.front_door
    if door is None:
        return None
    src = _source(name)
    for needed in ("https", "admin"):
        if needed not in m.ports:
            raise ManifestInvalid(f"{src}: a front_door needs a port named '{needed}'.")
    door = door.model_validate(sub.tree(door.model_dump(mode="json")))

    def dial(route: Route) -> str:
        other = manifests.get(route.service)
        if other is None or route.port not in other.ports:
            raise ManifestInvalid(f"{src}: a route goes to {route.service}'s port '{route.port}', "
                                  "which no manifest declares.")
        return f"127.0.0.1:{other.ports[route.port].port}"

    config = _caddy.build_config(door, https_port=m.ports["https"].port,
                                 admin_port=m.ports["admin"].port, dial=dial)
    file = GeneratedFile(paths.stack / f"{name}.json", _caddy.render(config))
    return file, f"http://127.0.0.1:{m.ports['admin'].port}/load"


def _collection(name: str, m: Manifest, sub: _Substitution) -> CollectionSource | None:
    source = m.config.services_collection
    if source is None:
        return None
    source = source.model_validate(sub.tree(source.model_dump(mode="json")))
    if not source.name:
        return None
    if _COLLECTION.fullmatch(source.name) is None:
        raise ManifestInvalid(f"{_source(name)}: '{source.name}' is not a PocketBase collection name.")
    if "http" not in m.ports:
        raise ManifestInvalid(f"{_source(name)}: a services_collection needs a port named 'http'.")
    return CollectionSource(f"http://127.0.0.1:{m.ports['http'].port}", source.name, source.email,
                            source.password)


def with_records(files: Mapping[str, Manifest], records: Mapping[str, str],
                 collection: str) -> dict[str, Manifest]:
    """The manifest files plus the services of a PocketBase collection's records.

    `records` maps a record's service name to its manifest JSON text. A record never
    replaces a file: one sentence says so. Raises ManifestInvalid.
    """
    out = dict(files)
    for name, text in sorted(records.items()):
        source = f"record {name} of the PocketBase collection {collection}"
        if _NAME.fullmatch(name) is None:
            raise ManifestInvalid(f"The {source}: '{name}' is not a service name.")
        if name in files:
            raise ManifestInvalid(f"The {source}: services/{name}/service.json exists already.")
        out[name] = parse_manifest(text, f"The {source}")
    return out


def resolve(manifests: Mapping[str, Manifest], env: Mapping[str, str], paths: StackPaths,
            binaries: BinaryLookup = find_binary) -> Desired:
    """The desired services for `manifests` under `env`; raises ManifestInvalid (one sentence)."""
    order = _order(manifests)
    _check_ports(manifests)
    services: list[ServiceSpec] = []
    for name in order:
        m = manifests[name]
        found: dict[str, Path] = {}
        for b in m.binaries:
            where = binaries(b)
            if isinstance(where, BinaryMissing):
                raise ManifestInvalid(
                    f"{_source(name)}: binary '{b.name}' comes from package '{b.package}', "
                    f"which is {where.value}."
                    if where is BinaryMissing.NOT_INSTALLED else
                    f"{_source(name)}: package '{b.package}' ships no executable '{b.name}'."
                )
            found[b.name] = where
        sub = _Substitution(name, manifests, env, paths, found)
        process = m.process.model_validate(sub.tree(m.process.model_dump(mode="json")))
        generated = _front_door(name, m, manifests, sub, paths)
        compose = process.compose
        services.append(ServiceSpec(
            name=name,
            argv=(process.command, *process.args),
            env=tuple(sorted(process.env.items())),
            ports=tuple(sorted(m.ports.items())),
            readiness=compose.readiness_probe,
            liveness=compose.liveness_probe,
            depends_on=tuple(sorted((d, dep.condition) for d, dep in compose.depends_on.items())),
            availability=compose.availability,
            shutdown=compose.shutdown,
            config_file=generated[0] if generated else None,
            reload_url=generated[1] if generated else None,
            services_from=_collection(name, m, sub),
        ))
    return Desired(tuple(services))
