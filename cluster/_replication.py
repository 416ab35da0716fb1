"""Keeping every owned stream at the replication factor."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from natsembed.errors import reason

if TYPE_CHECKING:
    from nimsforest.connection import ConnectionManager

log = logging.getLogger("cluster")


async def scale_streams(conn: ConnectionManager, names: Sequence[str], replicas: int) -> None:
    """Set num_replicas of each stream in `names` (KV buckets included, as KV_<bucket>).

    Changes only the replica count; every other setting stays as it is. Raises one error
    naming the streams that could not be changed (the next cycle tries again).
    """
    js = conn.nc.jetstream(timeout=5.0)
    failed: list[str] = []
    for name in names:
        try:
            info = await js.stream_info(name)
            if info.config.num_replicas == replicas:
                continue
            await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
            log.debug("Stream %s now has %d replicas", name, replicas)
        except Exception as exc:  # noqa: BLE001 - collected and reported together
            failed.append(f"{name} ({reason(exc)})")
    if failed:
        raise RuntimeError("could not scale " + ", ".join(failed))
