"""A forest node in its own process, for the multi-node tests.

    python -m tests.forest.forest_proc NATS_URL FOREST_YAML STATUS_FILE

Runs the Forest until SIGTERM/SIGINT and rewrites STATUS_FILE (JSON list of component
statuses) every 100 ms, so the test can see what this process handled. Its node name is
FOREST_PROC_NODE (default `proc`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import nats

from nimsforest.forest import Forest, load_forest_config


async def main(url: str, config: str, status_file: str) -> None:
    nc = await nats.connect(url)
    forest = Forest(nc, load_forest_config(config), stop_grace=1.0,
                    node=os.environ.get("FOREST_PROC_NODE", "proc"))
    await forest.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    out = Path(status_file)
    tmp = out.with_suffix(".tmp")
    while not stop.is_set():
        tmp.write_text(json.dumps([s.model_dump(mode="json") for s in forest.list()]))
        os.replace(tmp, out)
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except TimeoutError:
            pass
    await forest.stop()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
