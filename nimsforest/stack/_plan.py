"""Decide purely: `plan(desired, running) -> Plan`; the supervisor only carries it out.

Rules:
- a service in `running` but not in `desired` stops (dependents first);
- a service in `desired` but not in `running` starts (after what it depends on);
- a service whose resolved spec changed restarts; when only its live-reloadable config
  changed (Caddy's JSON, applied through its admin API) it is reconfigured instead and
  keeps its pid;
- a dependent restarts only when the change requires it: when its own resolved spec
  changed (a port of its dependency it uses, say), or when it waits for a dependency to
  complete successfully (a set-up job) and that job runs again;
- every other service is kept as it is, pid and all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nimsforest.stack._manifest import Condition
from nimsforest.stack._resolve import Desired, ServiceSpec


@dataclass(frozen=True)
class Plan:
    stop: tuple[str, ...] = ()  # removed services, dependents first
    restart: tuple[str, ...] = ()  # in dependency order
    reconfigure: tuple[str, ...] = ()  # config applied live, same pid
    start: tuple[str, ...] = ()  # new services, in dependency order
    keep: tuple[str, ...] = ()

    @property
    def changes_nothing(self) -> bool:
        return not (self.stop or self.restart or self.reconfigure or self.start)

    def describe(self) -> str:
        parts = [f"{verb} {', '.join(names)}" for verb, names in (
            ("stop", self.stop), ("restart", self.restart), ("reconfigure", self.reconfigure),
            ("start", self.start)) if names]
        return "; ".join(parts) if parts else "nothing to change"


def plan(desired: Desired, running: Mapping[str, ServiceSpec],
         running_order: tuple[str, ...] = ()) -> Plan:
    """What to do so that `running` (name -> the spec it runs) becomes `desired`.

    `running_order` is the order the running services were started in (dependency order);
    removed services stop in its reverse.
    """
    wanted = desired.by_name()
    order = running_order or tuple(sorted(running))
    stop = tuple(n for n in reversed(order) if n in running and n not in wanted)
    stop += tuple(sorted(n for n in running if n not in wanted and n not in stop))
    restart: list[str] = []
    reconfigure: list[str] = []
    start: list[str] = []
    keep: list[str] = []
    for spec in desired.services:  # dependency order: a job's restart is seen before its dependents
        current = running.get(spec.name)
        if current is None:
            start.append(spec.name)
        elif current.without_config() != spec.without_config() or any(dep in restart and cond is Condition.COMPLETED_SUCCESSFULLY
                 for dep, cond in spec.depends_on):
            restart.append(spec.name)
        elif current != spec:
            reconfigure.append(spec.name)
        else:
            keep.append(spec.name)
    return Plan(stop, tuple(restart), tuple(reconfigure), tuple(start), tuple(keep))
