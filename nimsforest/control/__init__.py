"""Changing a running forest: add, replace and remove components, reload forest.yaml.

The desired set of components lives in the JetStream KV bucket FOREST (one key per
component, scripts and prompts inline); every node watches it and applies it to its own
Forest, so a change made through any node runs on every node and survives restarts.
Ways in: the management API (`Controller.routers()`), NATS request/reply on
`forest.control.*`, SIGHUP (`Controller.reload_from_signal`). Every change leaves an
audit record in the stream AUDIT. See docs/CONTROL.md.

Public API:
    Controller(nc, forest, node=..., config_file=..., file_config=..., replicas=...,
               placement_tags=..., token=..., rate=...)
        await start() / stop(); add / replace / remove / reload_file / status / list /
        get / audit; routers(river_router); reload_from_signal(); resync();
        guard(cookie=...) (the API's caller check, for routes other layers add)
    without_components(config)      the Forest to start with (the controller fills it)
    Origin, DesiredComponent, AuditRecord, Actor, Via, Action
    audited_as(action)              the route class of a change route other layers add
    ControlError and its subclasses (nimsforest.control.errors)
    BUCKET, AUDIT_STREAM, SUBJECT_PREFIX, QUEUE_GROUP
"""

from __future__ import annotations

from nimsforest.control._audit import AUDIT, Action, Actor, AuditRecord, Via
from nimsforest.control._desired import DesiredComponent, Origin, without_components
from nimsforest.control._http import TOKEN_COOKIE, audited_as, record_refused
from nimsforest.control._nats import CLIENT_HEADER, PREFIX, QUEUE
from nimsforest.control._plane import Controller
from nimsforest.control._schemas import KIND_NAMES, parse_kind, validation_sentence
from nimsforest.control._store import BUCKET
from nimsforest.control.errors import (
    Conflict,
    ControlError,
    Invalid,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
    Unavailable,
)

AUDIT_STREAM = AUDIT.name
SUBJECT_PREFIX = PREFIX
QUEUE_GROUP = QUEUE

__all__ = [
    "AUDIT_STREAM",
    "BUCKET",
    "CLIENT_HEADER",
    "KIND_NAMES",
    "QUEUE_GROUP",
    "SUBJECT_PREFIX",
    "TOKEN_COOKIE",
    "Action",
    "Actor",
    "AuditRecord",
    "Conflict",
    "ControlError",
    "Controller",
    "DesiredComponent",
    "Invalid",
    "NotFound",
    "Origin",
    "RateLimited",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "Via",
    "parse_kind",
    "audited_as",
    "record_refused",
    "validation_sentence",
    "without_components",
]
