"""Fixtures for forest tests: forest.yaml files in a temp dir, a running Forest on the
real nats-server of `plain_nats`, and a collector of leaves seen on the Wind."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from nimsforest.forest import Forest, load_forest_config


def write_forest(root: Path, config: dict[str, Any], files: dict[str, str] | None = None) -> Path:
    """Write forest.yaml (and scripts/prompts) under `root`; return the yaml path."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in (files or {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    path = root / "forest.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Wind:
    """Every leaf published on wind.> (a core subscription, as any observer would use)."""

    def __init__(self) -> None:
        self.leaves: list[dict[str, Any]] = []

    async def cb(self, msg: Any) -> None:
        self.leaves.append(json.loads(msg.data))

    def on(self, subject: str) -> list[dict[str, Any]]:
        return [leaf for leaf in self.leaves if leaf["subject"] == subject]


@pytest.fixture
async def wind(nc: nats.NATS) -> Wind:
    w = Wind()
    await nc.subscribe("wind.>", cb=w.cb)
    return w


@pytest.fixture
async def forest_factory(
    nc: nats.NATS, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Forest]]]:
    made: list[Forest] = []

    async def make(
        config: dict[str, Any],
        files: dict[str, str] | None = None,
        *,
        start: bool = True,
        subdir: str = "forest",
        **kw: Any,
    ) -> Forest:
        path = write_forest(tmp_path / subdir, config, files)
        forest = Forest(nc, load_forest_config(path), stop_grace=1.0, **kw)
        made.append(forest)
        if start:
            await forest.start()
        return forest

    yield make
    await asyncio.gather(*(f.stop() for f in made), return_exceptions=True)


SCORING = (
    Path(__file__).resolve().parents[2] / "nimsforest" / "demo" / "treehouses" / "scoring.lua"
).read_text()


async def stored_leaves(js: Any, subject: str = "wind.got.it") -> int | None:
    """How many leaves on `subject` WIND holds (None while it has no leader to answer)."""
    try:
        return (await js.stream_info("WIND", subjects_filter=subject)).state.messages
    except Exception:  # noqa: BLE001 - no leader yet: ask again
        return None


async def holds(count: Awaitable[int | None], expected: int) -> bool:
    """For `eventually`: whether a count read (e.g. stored_leaves) is `expected`."""
    return await count == expected
