"""Provisioners: how `grow` adds a node. Built in: `local` and `command`; more as plugins.

A provisioner is any object with a `name`, a `check(request)` that raises
ProvisionerError (one sentence) when it cannot work with what it was given (called
before the operator is asked anything), and `async provision(request) -> ProvisionResult`
that adds the node and says how it went. `provision` reports failure in its result and
raises nothing for an expected failure.

Plugins are Python entry points in the group `nimsforest.provisioners`: the entry point
names the provisioner, and loads a callable taking the options mapping (from
`--provisioner-option KEY=VALUE` and the built-in flags) and returning a provisioner:

    [project.entry-points."nimsforest.provisioners"]
    hetzner = "my_package.grow:HetznerProvisioner"
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol, runtime_checkable

from nimsforest.grow.model import NodeTarget

GROUP = "nimsforest.provisioners"
BUILTIN: dict[str, str] = {
    "local": "nimsforest.grow.provisioners.local:LocalProvisioner",
    "command": "nimsforest.grow.provisioners.command:CommandProvisioner",
}


class ProvisionerError(ValueError):
    """A provisioner cannot work with its options or the request; one sentence."""


@dataclass(frozen=True, repr=False)
class ProvisionRequest:
    node_name: str
    registry_url: str | None
    registry_service: str
    existing: tuple[NodeTarget, ...]  # the forest's nodes as grow found them
    workdir: Path  # where the provisioner may keep files (next to the state file)
    timeout: float  # seconds for the whole provisioning
    cluster_secret: str | None = None
    registry_token: str | None = None
    package: str = "nimsforest"  # what a new machine pip-installs

    def __repr__(self) -> str:  # never show secrets
        return f"ProvisionRequest(node_name={self.node_name!r}, registry_url={self.registry_url!r})"


@dataclass(frozen=True)
class ProvisionResult:
    ok: bool
    node_name: str
    detail: str  # one sentence: what happened, or why it failed


@runtime_checkable
class Provisioner(Protocol):
    name: str

    def check(self, request: ProvisionRequest) -> None: ...

    async def provision(self, request: ProvisionRequest) -> ProvisionResult: ...


Factory = Callable[[Mapping[str, str]], Provisioner]


def available() -> dict[str, str]:
    """Provisioner name -> where it comes from ("module:attr"), built-ins first."""
    found = dict(BUILTIN)
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def load(name: str, options: Mapping[str, str]) -> Provisioner:
    """The provisioner `name`, built with `options`; ProvisionerError when it cannot be."""
    names = available()
    target = names.get(name)
    if target is None:
        raise ProvisionerError(f"Unknown provisioner '{name}': available are {', '.join(sorted(names))}.")
    try:
        if name in BUILTIN:
            module, attr = target.split(":")
            factory: Factory = getattr(importlib.import_module(module), attr)
        else:
            factory = next(ep for ep in entry_points(group=GROUP) if ep.name == name).load()
    except Exception as exc:  # noqa: BLE001 - a broken plugin is one sentence, not a traceback
        raise ProvisionerError(f"The provisioner '{name}' cannot be loaded: {exc}.") from None
    provisioner = factory(options)
    if not isinstance(provisioner, Provisioner):
        raise ProvisionerError(f"The provisioner '{name}' does not have name, check() and provision().")
    return provisioner


__all__ = ["BUILTIN", "GROUP", "ProvisionRequest", "ProvisionResult", "Provisioner", "ProvisionerError",
           "available", "load"]
