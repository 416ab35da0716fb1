"""The one reading of a pydantic ValidationError: which field, and what is wrong with it
in words. Settings, forest.yaml, the control plane's bodies and the sidecar options each
turn it into their own sentence (naming a flag, a file, a component or a JSON field)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

# loc entries pydantic adds that are not fields a person wrote
_NOT_FIELDS = ("body", "function-", "tagged-union")


@dataclass(frozen=True)
class FieldError:
    loc: tuple[str, ...]  # the field's path, e.g. ("brain", "model"); () for the whole value
    message: str  # e.g. "is required", "is not a known setting", "must be at least 1"
    type: str  # pydantic's error type: missing, extra_forbidden, json_invalid, ...
    input: Any = None

    @property
    def field(self) -> str | None:
        return ".".join(self.loc) or None


def first_error(exc: ValidationError | Iterable[Any]) -> FieldError | None:
    """The first error of `exc` (a ValidationError, or FastAPI's list of error dicts)."""
    errors: Sequence[Any] = exc.errors() if isinstance(exc, ValidationError) else list(exc)
    if not errors:
        return None
    err = errors[0]
    loc = tuple(str(p) for p in err.get("loc", ()) if not str(p).startswith(_NOT_FIELDS))
    kind = str(err.get("type", ""))
    if kind == "missing":
        message = "is required"
    elif kind == "extra_forbidden":
        message = "is not a known setting"
    else:
        message = str(err.get("msg", "is not valid")).removeprefix("Value error, ")
    return FieldError(loc=loc, message=message, type=kind, input=err.get("input"))


__all__ = ["FieldError", "first_error"]
