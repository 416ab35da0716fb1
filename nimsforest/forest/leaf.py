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
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from nimsforest.forest.errors import BadEvent
from nimsforest.forest.subjects import check_subject


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check_ts(ts: Any) -> str:
    if not isinstance(ts, str) or not ts:
        raise ValueError("ts must be an RFC 3339 timestamp")
    try:
        datetime.fromisoformat(ts.replace("Z", "+00:00"))
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
    def new(cls, subject: str, data: Any, source: str) -> Leaf:
        leaf = cls(subject=subject, data=data, source=source, ts=utc_now())
        leaf.validate()
        return leaf

    def validate(self) -> None:
        try:
            check_subject(self.subject)
        except ValueError as exc:
            raise ValueError(f"leaf subject: {exc}") from None
        if not isinstance(self.data, (dict, list)):
            raise ValueError("leaf data must be a JSON object or array")
        if not isinstance(self.source, str) or not self.source:
            raise ValueError("leaf source cannot be empty")
        _check_ts(self.ts)

    def to_json(self) -> bytes:
        return json.dumps(
            {"subject": self.subject, "data": self.data, "source": self.source, "ts": self.ts},
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Leaf:
        """Parse and validate; raises BadEvent (one sentence) for anything else."""
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadEvent("the message is not JSON, so it is not a leaf") from None
        if not isinstance(obj, dict) or set(obj) - {"subject", "data", "source", "ts"}:
            raise BadEvent("the message is not a leaf envelope {subject, data, source, ts}")
        try:
            leaf = cls(subject=obj.get("subject"), data=obj.get("data"), source=obj.get("source"), ts=obj.get("ts"))
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


def soil_key(entity: str) -> str:
    """The Soil key for `entity`, e.g. 'jane@acme.io' -> 'jane=40acme.io'."""
    if _KEY_OK.match(entity) and "=" not in entity and not entity.startswith(".") and not entity.endswith("."):
        return entity
    key = _KEY_BAD_CHAR.sub(lambda m: "".join(f"={b:02X}" for b in m.group().encode()), entity)
    return key.strip(".") or "=2E"


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
        return json.dumps(
            {"entity": self.entity, "action": self.action.value, "data": self.data, "nim": self.nim, "ts": self.ts},
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Compost:
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            entry = cls(
                entity=obj.get("entity"),
                action=CompostAction(obj.get("action")),
                data=obj.get("data"),
                nim=obj.get("nim"),
                ts=obj.get("ts"),
            )
            entry.validate()
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise BadEvent(f"invalid Humus entry: {exc}") from None
        return entry


__all__ = ["Leaf", "Compost", "CompostAction", "soil_key", "utc_now"]
