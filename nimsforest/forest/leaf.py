"""Leaf: the typed event carried on the Wind, and Compost: one state change in Humus.

Leaf JSON: {"subject": str, "data": object|array, "source": str, "ts": RFC 3339}.
Compost JSON: {"entity": str, "action": "create"|"update"|"delete", "data": any, "nim": str,
"ts": RFC 3339}; data is required unless the action is delete.

Both are plain frozen dataclasses with hand-written validation: they sit on the hot path
of every event.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from nimsforest.forest.errors import BadEvent
from nimsforest.forest.subjects import check_subject

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
_decode = json.JSONDecoder().decode


def dumps(value: Any) -> bytes:
    """Compact JSON bytes (NaN refused); one shared encoder, built once."""
    return _encode(value).encode()


def loads(raw: bytes) -> Any:
    """JSON bytes (UTF-8) -> value; raises ValueError (UnicodeDecodeError is one)."""
    return _decode(raw.decode())


_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text


def utc_now() -> str:
    """RFC 3339 UTC with microseconds, e.g. 2026-01-15T09:30:00.123456Z."""
    ns = time.time_ns()
    sec = ns // 1_000_000_000
    if sec != _second[0]:
        _second[0], _second[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_second[1]}.{ns // 1000 % 1_000_000:06d}Z"


def _check_ts(ts: Any) -> str:
    if not isinstance(ts, str) or not ts:
        raise ValueError("ts must be an RFC 3339 timestamp")
    try:
        datetime.fromisoformat(ts)
    except ValueError:
        raise ValueError(f"ts '{ts}' is not an RFC 3339 timestamp") from None
    return ts


@dataclass(frozen=True, slots=True)
class Leaf:
    subject: str
    data: dict[str, Any] | list[Any]
    source: str
    ts: str

    @classmethod
    def new(cls, subject: str, data: Any, source: str, *, trusted: bool = False) -> Leaf:
        """A new leaf stamped now. `trusted`: subject and source were validated already
        (component config), so only the data is checked."""
        leaf = cls(subject=subject, data=data, source=source, ts=utc_now())
        if not trusted:
            leaf.validate()
        elif not isinstance(data, (dict, list)):
            raise ValueError("leaf data must be a JSON object or array")
        return leaf

    def validate(self) -> None:
        try:
            check_subject(self.subject)
        except ValueError as exc:
            raise ValueError(f"leaf subject: {exc}") from None
        if not isinstance(self.data, (dict, list)):
            raise ValueError("leaf data must be a JSON object or array")  # noqa: TRY004 - a bad value
        if not isinstance(self.source, str) or not self.source:
            raise ValueError("leaf source cannot be empty")
        _check_ts(self.ts)

    def to_json(self) -> bytes:
        return dumps(
            {"subject": self.subject, "data": self.data, "source": self.source, "ts": self.ts}
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Leaf:
        """Parse and validate; raises BadEvent (one sentence) for anything else."""
        try:
            obj = loads(raw)
        except ValueError:
            raise BadEvent("the message is not JSON, so it is not a leaf") from None
        if not isinstance(obj, dict) or set(obj) - {"subject", "data", "source", "ts"}:
            raise BadEvent("the message is not a leaf envelope {subject, data, source, ts}")
        try:
            fields: Any = obj  # checked by validate()
            leaf = cls(
                subject=fields.get("subject"),
                data=fields.get("data"),
                source=fields.get("source"),
                ts=fields.get("ts"),
            )
            leaf.validate()
        except (ValueError, TypeError) as exc:
            raise BadEvent(f"invalid leaf: {exc}") from None
        return leaf


class CompostAction(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


# Soil keys are KV keys; entity names are mapped onto that alphabet reversibly enough
# to be readable: anything outside it becomes =XX (hex of the UTF-8 byte).
_KEY_OK = re.compile(r"^[-/_=.a-zA-Z0-9]+$")
_KEY_BAD_CHAR = re.compile(r"[^-/_.a-zA-Z0-9]")
_DOT_BEFORE_DOT = re.compile(r"\.(?=\.)")


def soil_key(entity: str) -> str:
    """The Soil key for `entity`, e.g. 'jane@acme.io' -> 'jane=40acme.io'."""
    if (
        _KEY_OK.match(entity)
        and "=" not in entity
        and ".." not in entity
        and not entity.startswith(".")
        and not entity.endswith(".")
    ):
        return entity
    key = _KEY_BAD_CHAR.sub(lambda m: "".join(f"={b:02X}" for b in m.group().encode()), entity)
    # a KV key's tokens are separated by single dots: a dot before another one is escaped
    return _DOT_BEFORE_DOT.sub("=2E", key.strip(".")) or "=2E"


@dataclass(frozen=True, slots=True)
class Compost:
    entity: str
    action: CompostAction
    data: Any
    nim: str
    ts: str

    def validate(self) -> None:
        if not isinstance(self.entity, str) or not self.entity:
            raise ValueError("compost entity cannot be empty")
        if self.action is not CompostAction.DELETE and self.data is None:
            raise ValueError(f"compost data is required for {self.action.value}")
        if not isinstance(self.nim, str) or not self.nim:
            raise ValueError("compost nim cannot be empty")
        _check_ts(self.ts)

    def to_json(self) -> bytes:
        return dumps(
            {
                "entity": self.entity,
                "action": self.action.value,
                "data": self.data,
                "nim": self.nim,
                "ts": self.ts,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Compost:
        try:
            obj = loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("not an object")  # noqa: TRY004 - reported as BadEvent
            fields: Any = obj  # checked by validate()
            entry = cls(
                entity=fields.get("entity"),
                action=CompostAction(fields.get("action")),
                data=fields.get("data"),
                nim=fields.get("nim"),
                ts=fields.get("ts"),
            )
            entry.validate()
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise BadEvent(f"invalid Humus entry: {exc}") from None
        return entry


__all__ = ["Compost", "CompostAction", "Leaf", "dumps", "loads", "soil_key", "utc_now"]
