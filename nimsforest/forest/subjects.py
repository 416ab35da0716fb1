"""Subject rules and the mapping between what users write and what is on the wire.

- River subjects start with `river.`; users may leave the prefix out (`contacts` and
  `river.contacts` are the same River subject).
- A leaf subject (`contact.created`) travels on the Wind stream as `wind.contact.created`.
- Patterns (what a component consumes) may use `*` and a final `>`; subjects something is
  published on may not.
"""

from __future__ import annotations

import re

RIVER_PREFIX = "river."
WIND_PREFIX = "wind."
HUMUS_PREFIX = "humus."

_TOKEN = re.compile(r"^[A-Za-z0-9_\-:@$+=~]+$")


_VALID: set[str] = set()  # subjects already found valid (not patterns), bounded


def check_subject(subject: str, *, pattern: bool = False) -> str:
    """Return `subject` if it is a valid NATS subject (or pattern); raise ValueError."""
    if subject in _VALID:
        return subject
    _check(subject, pattern)
    if not pattern and len(_VALID) < 4096:
        _VALID.add(subject)
    return subject


def _check(subject: str, pattern: bool) -> None:
    if not isinstance(subject, str) or not subject:
        raise ValueError("a subject cannot be empty")
    tokens = subject.split(".")
    for i, tok in enumerate(tokens):
        if tok in ("*", ">"):
            if not pattern:
                raise ValueError(
                    f"'{subject}' contains the wildcard '{tok}', which is only allowed in patterns"
                )
            if tok == ">" and i != len(tokens) - 1:
                raise ValueError(f"'{subject}' has '>' before its last token")
            continue
        if not tok:
            raise ValueError(f"'{subject}' has an empty token")
        if not _TOKEN.match(tok):
            raise ValueError(
                f"'{subject}' has an invalid token '{tok}' (letters, digits and _-:@$+=~ only)"
            )


def river_subject(subject: str, *, pattern: bool = False) -> str:
    """`contacts` or `river.contacts` -> `river.contacts` (validated)."""
    subject = subject.strip()
    if subject == "river":
        raise ValueError("'river' alone is not a River subject; add a name such as river.contacts")
    full = subject if subject.startswith(RIVER_PREFIX) else RIVER_PREFIX + subject
    return check_subject(full, pattern=pattern)


def wind_subject(leaf_subject: str, *, pattern: bool = False) -> str:
    """`contact.created` -> `wind.contact.created` (validated)."""
    return WIND_PREFIX + check_subject(leaf_subject, pattern=pattern)


def overlap(a: str, b: str) -> bool:
    """Whether two NATS subjects or patterns can match one same subject."""
    ta, tb = a.split("."), b.split(".")
    for x, y in zip(ta, tb, strict=False):
        if ">" in (x, y):
            return True
        if x != y and "*" not in (x, y):
            return False
    return len(ta) == len(tb)


def humus_subject(nim: str, action: str) -> str:
    return f"{HUMUS_PREFIX}{nim}.{action}"


__all__ = [
    "HUMUS_PREFIX",
    "RIVER_PREFIX",
    "WIND_PREFIX",
    "check_subject",
    "humus_subject",
    "overlap",
    "river_subject",
    "wind_subject",
]
