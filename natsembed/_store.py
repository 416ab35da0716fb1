"""The node's JetStream store on disk: what it holds, and setting it aside (never in place)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from natsembed._config import APP_ACCOUNT

REMOVED_PREFIX = "removed-"
KEEP_REMOVED = 3  # set-aside stores kept; older ones are deleted when a new one is made


def stored_streams(store: Path) -> tuple[str, ...]:
    """Streams of the application account that have a folder in `store` (sorted)."""
    folder = store / "jetstream" / APP_ACCOUNT / "streams"
    if not folder.is_dir():
        return ()
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_dir()))


def set_aside(store: Path, into: Path, keep: int = KEEP_REMOVED, now: datetime | None = None) -> Path:
    """Rename `store` to `into`/removed-<UTC time> and keep only the newest `keep` of those
    folders. Returns the new place of the store (nothing is moved if `store` is missing)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    target = into / f"{REMOVED_PREFIX}{stamp}"
    n = 1
    while target.exists():
        target = into / f"{REMOVED_PREFIX}{stamp}-{n}"
        n += 1
    if store.exists():
        store.rename(target)
    kept = sorted((p for p in into.glob(f"{REMOVED_PREFIX}*") if p.is_dir()), key=lambda p: p.name)
    for old in kept[: max(0, len(kept) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)
    return target
