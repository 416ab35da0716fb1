"""Durations as people write them ('10s', '5m', '250ms', '1h', or seconds). Its own small
module so that forest.yaml's specs read durations without importing the node's settings."""

from __future__ import annotations

import re
from typing import Any

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """'10s', '5m', '250ms', '1h' or a number of seconds -> seconds as a float."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError(f"'{value}' is not a duration such as 10s, 5m or 250ms")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"'{value}' is not a duration such as 10s, 5m or 250ms")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


__all__ = ["parse_duration"]
