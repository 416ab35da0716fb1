"""The resolved services as process-compose YAML (the seed's generated process-compose.yaml).

It is what `nimsforest stack plan` prints and what the supervisor writes to
.nimsforest-stack/process-compose.yaml: a readable record of what runs. Values of
environment variables whose names say they are secret are shown as `***`.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from nimsforest.stack._manifest import Probe
from nimsforest.stack._resolve import Desired

_SECRET = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)


def _probe(p: Probe) -> dict[str, Any]:
    return p.model_dump(mode="json", exclude_none=True)


def to_process_compose(desired: Desired) -> str:
    import yaml  # only where YAML is written (not on the supervisor's start-up path)

    secrets = {v for s in desired.services for k, v in s.env if _SECRET.search(k) and v}
    processes: dict[str, Any] = {}
    for s in desired.services:
        command = " ".join("***" if a in secrets else shlex.quote(a) for a in s.argv)
        entry: dict[str, Any] = {"command": command}
        if s.env:
            entry["environment"] = [f"{k}={'***' if _SECRET.search(k) else v}" for k, v in s.env]
        if s.depends_on:
            entry["depends_on"] = {d: {"condition": c.value} for d, c in s.depends_on}
        if s.readiness:
            entry["readiness_probe"] = _probe(s.readiness)
        if s.liveness:
            entry["liveness_probe"] = _probe(s.liveness)
        entry["availability"] = s.availability.model_dump(mode="json")
        entry["shutdown"] = s.shutdown.model_dump(mode="json")
        if s.ports:
            entry["ports"] = {n: p.port for n, p in s.ports}
        if s.config_file:
            entry["generated_config"] = str(s.config_file.path)
        processes[s.name] = entry
    return yaml.safe_dump({"version": "0.5", "processes": processes}, sort_keys=False)
