"""The stack: NimsForest, PocketBase and Caddy from manifests, health-gated, one command.

Public API:

    load_manifests(dir), parse_manifest(text, source)   services/<name>/service.json
    Manifest (+ Probe, Availability, Shutdown, FrontDoor, ...)   the schema
    resolve(manifests, env, paths) -> Desired            the pure generation function
    with_records(files, records, collection)             + services from a PocketBase collection
    plan(desired, running) -> Plan                       the pure diff
    to_process_compose(desired) -> str                   the generated process-compose.yaml
    StackPaths, ServiceSpec, Desired                     resolved services
    supervise(paths, env)                                the supervisor (`stack up`)
    StackStatus, ServiceStatus, ServiceState, Health     what `stack status` shows
    errors: StackError, ManifestInvalid, StackRunning
"""

from nimsforest.stack._compose import to_process_compose
from nimsforest.stack._manifest import (
    Availability,
    Binary,
    Condition,
    FrontDoor,
    Manifest,
    Probe,
    Restart,
    Shutdown,
    load_manifests,
    parse_manifest,
)
from nimsforest.stack._plan import Plan, plan
from nimsforest.stack._resolve import (
    DEFAULT_SERVICES,
    BinaryMissing,
    Desired,
    GeneratedFile,
    ServiceSpec,
    StackPaths,
    find_binary,
    resolve,
    with_records,
)
from nimsforest.stack._state import (
    Health,
    ServiceState,
    ServiceStatus,
    StackPhase,
    StackStatus,
    read_status,
    running_supervisor,
)
from nimsforest.stack._supervisor import Stack, desired_services, ports_in_use, supervise
from nimsforest.stack.errors import ManifestInvalid, StackError, StackRunning

__all__ = [
    "DEFAULT_SERVICES",
    "Availability",
    "Binary",
    "BinaryMissing",
    "Condition",
    "Desired",
    "FrontDoor",
    "GeneratedFile",
    "Health",
    "Manifest",
    "ManifestInvalid",
    "Plan",
    "Probe",
    "Restart",
    "ServiceSpec",
    "ServiceState",
    "ServiceStatus",
    "Shutdown",
    "Stack",
    "StackError",
    "StackPaths",
    "StackPhase",
    "StackRunning",
    "StackStatus",
    "desired_services",
    "find_binary",
    "load_manifests",
    "parse_manifest",
    "plan",
    "ports_in_use",
    "read_status",
    "resolve",
    "running_supervisor",
    "supervise",
    "to_process_compose",
    "with_records",
]
