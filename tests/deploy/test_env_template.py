"""env.template documents every variable a node (and the registry server) reads, with its default."""

from __future__ import annotations

import re

import click

from nimsforest.cli.registry import serve
from nimsforest.settings import Settings, env_name
from tests.deploy.conftest import ROOT

LINE = re.compile(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$")


def entries() -> dict[str, tuple[bool, str]]:
    """VAR -> (commented out, value) for every assignment in env.template."""
    out: dict[str, tuple[bool, str]] = {}
    lines = (ROOT / "env.template").read_text().splitlines()
    for i, line in enumerate(lines):
        m = LINE.match(line)
        if m:
            assert m.group(2) not in out, f"{m.group(2)} appears twice"
            # a comment explains each variable (or a group of variables right below it)
            assert i > 0 and lines[i - 1].startswith("#"), f"{m.group(2)} has no comment above it"
            out[m.group(2)] = (m.group(1) == "#", m.group(3))
    return out


def test_every_setting_is_documented() -> None:
    documented = entries()
    missing = [env_name(f) for f in Settings.model_fields if env_name(f) not in documented]
    assert not missing, f"env.template lacks {missing}"


def test_every_registry_server_variable_is_documented() -> None:
    documented = entries()
    envvars = [p.envvar for p in serve.params if isinstance(p, click.Option) and p.envvar]
    assert envvars and all(v in documented for v in envvars), envvars


def test_nothing_stale_is_documented() -> None:
    known = {env_name(f) for f in Settings.model_fields}
    known |= {p.envvar for p in serve.params if isinstance(p, click.Option) and p.envvar}
    assert set(entries()) <= known, set(entries()) - known


def test_documented_defaults_are_the_real_defaults() -> None:
    by_env = {env_name(f): f for f in Settings.model_fields}
    checked = 0
    for var, (commented, value) in entries().items():
        field = by_env.get(var)
        if field is None or not commented or value == "":
            continue  # the registry server's, a required placeholder, or a computed default
        if field == "data_dir":
            continue  # depends on the user running it; the text explains both
        info = Settings.model_fields[field]
        parsed = getattr(Settings(**{field: value}), field)
        default = info.default_factory() if info.default_factory else info.default
        assert parsed == default, f"{var}: env.template says {value!r}, the default is {default!r}"
        checked += 1
    assert checked >= 20


def test_required_placeholders_are_valid_values() -> None:
    values = {var: value for var, (commented, value) in entries().items() if not commented}
    assert set(values) == {"REGISTRY_URL", "NATS_CLUSTER_SECRET"}
    s = Settings(registry_url=values["REGISTRY_URL"], cluster_secret=values["NATS_CLUSTER_SECRET"])
    assert s.registry_url == values["REGISTRY_URL"]
