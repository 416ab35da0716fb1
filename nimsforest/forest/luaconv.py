"""Values between Python (JSON) and Lua, and the `json` helper table scripts see.

The array/object rule (Lua has one table type, JSON has two):
- A table is an object when it has a string key, an array when its keys are exactly 1..n.
- An **empty table is an array** (`[]`) unless it is marked as an object: in Lua an empty
  `{}` is nearly always a list about to be filled (`signals = {}`). Empty JSON objects
  given to a script arrive marked (so `{}` comes back as `{}`, and `[]` as `[]`), and
  `json.object()` / `json.object(t)` marks one; `json.array(t)` marks an array. A
  non-empty object the script empties itself comes back as `[]`.
- Marked arrays keep nil holes as null (`json.array({1, nil, 3})` -> [1, null, 3]).
- JSON null becomes nil (so a key whose value is null is absent in Lua). Lua integers stay
  integers, Lua floats stay floats; NaN and infinities are refused. Functions, userdata and
  coroutines cannot be encoded.
"""

from __future__ import annotations

import json
import math
from typing import Any

import lupa

MAX_DEPTH = 64


class ConversionError(ValueError):
    pass


class Converter:
    """Bound to one Lua runtime; `mark(t, kind)` and `kind_of(t)` are Lua functions from
    the sandbox prelude."""

    def __init__(self, runtime: Any, mark: Any, kind_of: Any) -> None:
        self._rt = runtime
        self._mark = mark
        self._kind_of = kind_of
        self._table_from = runtime.table_from

    # Python -> Lua --------------------------------------------------------------------
    def to_lua(self, value: Any) -> Any:
        """Fast path: a value with no empty containers, no null in arrays and no huge
        integers converts in one call (its tables need no kind markers to round-trip)."""
        if isinstance(value, (dict, list)) and _plain(value, 0):
            return self._table_from(value, recursive=True)
        return self._to_lua(value, 0)

    def _to_lua(self, value: Any, depth: int) -> Any:
        if isinstance(value, dict):
            if depth > MAX_DEPTH:
                raise ConversionError("the input nests deeper than 64 levels")
            t = self._table_from(
                {k: self._to_lua(v, depth + 1) for k, v in value.items() if v is not None}
            )
            return self._mark(t, "object")
        if isinstance(value, list):
            if depth > MAX_DEPTH:
                raise ConversionError("the input nests deeper than 64 levels")
            t = self._table_from(
                {i: self._to_lua(v, depth + 1) for i, v in enumerate(value, 1) if v is not None}
            )
            return self._mark(t, "array")
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not (-(2**63) <= value < 2**63)
        ):
            return float(value)
        return value

    # Lua -> Python --------------------------------------------------------------------
    def from_lua(self, value: Any, depth: int = 0) -> Any:
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            if math.isnan(value) or math.isinf(value):
                raise ConversionError("NaN and infinite numbers cannot be encoded as JSON")
            return value
        ltype = lupa.lua_type(value)
        if ltype != "table":
            raise ConversionError(
                f"a Lua {ltype or type(value).__name__} cannot be encoded as JSON"
            )
        if depth > MAX_DEPTH:
            raise ConversionError("the table nests deeper than 64 levels (or refers to itself)")
        items = list(value.items())
        if items and all(isinstance(k, str) for k, _ in items):
            kind = "object"  # string keys: an object whatever its marker says
        else:
            kind = self._kind_of(value)[0] or ("array" if self._is_sequence(items) else "object")
        if kind == "array":
            length = max(
                [k for k, _ in items if isinstance(k, int) and not isinstance(k, bool)] + [0]
            )
            out: list[Any] = [None] * length
            for k, v in items:
                if not isinstance(k, int) or isinstance(k, bool) or k < 1:
                    raise ConversionError(f"an array table has the non-index key {k!r}")
                out[k - 1] = self.from_lua(v, depth + 1)
            return out
        obj: dict[str, Any] = {}
        for k, v in items:
            if isinstance(k, str):
                key = k
            elif isinstance(k, (int, float)) and not isinstance(k, bool):
                key = str(k)
            else:
                raise ConversionError(
                    f"a table key of type {type(k).__name__} cannot be a JSON key"
                )
            obj[key] = self.from_lua(v, depth + 1)
        return obj

    @staticmethod
    def _is_sequence(items: list[tuple[Any, Any]]) -> bool:
        """Keys exactly 1..n; an empty unmarked table counts as a sequence (see above)."""
        if not items:
            return True  # the empty-table rule: an unmarked {} is an array
        keys = [k for k, _ in items]
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in keys):
            return False
        return min(keys) == 1 and max(keys) == len(keys)

    # the `json` helper ----------------------------------------------------------------
    def json_encode(self, value: Any) -> tuple[Any, Any]:
        try:
            return json.dumps(self.from_lua(value), separators=(",", ":"), ensure_ascii=False), None
        except (ConversionError, ValueError, TypeError) as exc:
            return None, str(exc)

    def json_decode(self, text: Any) -> tuple[Any, Any]:
        if not isinstance(text, str):
            return None, "json.decode expects a string"
        try:
            return self.to_lua(json.loads(text)), None
        except (ValueError, ConversionError) as exc:
            return None, f"invalid JSON: {exc}"


def _plain(value: Any, depth: int) -> bool:
    if depth > MAX_DEPTH or not value:
        return False
    in_list = isinstance(value, list)
    for v in value if in_list else value.values():
        if isinstance(v, (dict, list)):
            if not _plain(v, depth + 1):
                return False
        elif v is None:
            if in_list:
                return False
        elif type(v) is int and not -(2**63) <= v < 2**63:
            return False
    return True


__all__ = ["MAX_DEPTH", "ConversionError", "Converter"]
