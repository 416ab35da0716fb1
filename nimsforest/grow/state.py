"""What `grow` remembers between runs, per forest: its limits and its expansions.

The state file (default ~/.local/state/nimsforest/grow.json, or $XDG_STATE_HOME) is
JSON, written atomically. A run holds an exclusive lock on `<file>.lock` from reading
the state to recording its expansion, so two runs (a cron job and a person) never both
expand. Every expansion attempt starts the cooldown, a failed one too: a provisioner
that failed may still have created something.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from natsembed import write_private
from nimsforest.grow.collect import GrowError

KEEP_EXPANSIONS = 20


def default_state_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "nimsforest" / "grow.json"


class Expansion(BaseModel):
    model_config = ConfigDict(frozen=True)
    at: datetime
    node: str
    provisioner: str
    ok: bool
    detail: str


class ForestState(BaseModel):
    model_config = ConfigDict(frozen=True)
    max_nodes: int | None = None  # remembered from the last --max-nodes / env given
    cooldown_seconds: float | None = None  # remembered from the last --cooldown / env given
    expansions: tuple[Expansion, ...] = ()

    @property
    def last_expansion_at(self) -> datetime | None:
        return max((e.at for e in self.expansions), default=None)


class GrowState(BaseModel):
    model_config = ConfigDict(frozen=True)
    version: int = 1
    forests: dict[str, ForestState] = Field(default_factory=dict)

    def forest(self, key: str) -> ForestState:
        return self.forests.get(key, ForestState())

    def with_forest(self, key: str, forest: ForestState) -> GrowState:
        return self.model_copy(update={"forests": {**self.forests, key: forest}})


class StateFile:
    """The state file of one run, locked from `open()` to its end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[StateFile]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise GrowError(f"Cannot use the state file {self.path}: {exc.strerror or exc}.") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GrowError(f"Another nimsforest grow is running with the state file {self.path}.") from None
            self._lock_fd = fd
            yield self
        finally:
            self._lock_fd = None
            os.close(fd)

    def load(self) -> GrowState:
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return GrowState()
        except OSError as exc:
            raise GrowError(f"Cannot read the state file {self.path}: {exc.strerror or exc}.") from None
        try:
            return GrowState.model_validate(json.loads(raw))
        except (ValueError, ValidationError):
            raise GrowError(f"The state file {self.path} is not a grow state file; move it away or pass --state.") \
                from None

    def save(self, state: GrowState) -> None:
        assert self._lock_fd is not None, "save() outside locked()"
        try:
            write_private(self.path, state.model_dump_json(indent=2) + "\n")
        except OSError as exc:
            raise GrowError(f"Cannot write the state file {self.path}: {exc.strerror or exc}.") from None


def record(state: GrowState, key: str, expansion: Expansion) -> GrowState:
    forest = state.forest(key)
    kept = (*forest.expansions, expansion)[-KEEP_EXPANSIONS:]
    return state.with_forest(key, forest.model_copy(update={"expansions": kept}))


def remember_limits(state: GrowState, key: str, max_nodes: int | None, cooldown: float | None) -> GrowState:
    """Limits given on this run (flag or environment) are kept for the next runs."""
    forest = state.forest(key)
    update = {k: v for k, v in (("max_nodes", max_nodes), ("cooldown_seconds", cooldown)) if v is not None}
    return state.with_forest(key, forest.model_copy(update=update)) if update else state


__all__ = ["Expansion", "ForestState", "GrowState", "StateFile", "default_state_path", "record",
           "remember_limits"]
