"""One bench replica: the full daemon (`build(settings)`: detection, breakers, statements, metrics stages)
recording when it consumed what, so the bench can measure what N replicas do together.

    python -m watcher.scale.worker CONFIG.toml PROGRESS.json

SIGTERM stops it like `spendwatch run` (checkpoint, commit, exit 0); the samples are written at exit:
{"samples": [[unix_time, consumed_so_far], ...], "partitions": [...], "restored": n}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time

from watcher.config import load_settings
from watcher.stages import build


async def main(config: str, out: str) -> None:
    settings = load_settings(config)
    samples: list[tuple[float, int]] = []
    last = [0]

    def on_batch(daemon) -> None:
        n = daemon.counters.consumed
        if n != last[0]:
            samples.append((time.time(), n))
            last[0] = n

    daemon = build(settings).daemon(on_batch=on_batch)
    daemon.install_signal_handlers()
    try:
        await daemon.run()
    finally:
        with open(out, "w") as f:
            json.dump({"samples": samples, "partitions": sorted(daemon.shards),
                       "restored": daemon.counters.restored_partitions}, f)


if __name__ == "__main__":
    logging.basicConfig(level="WARNING", format="%(asctime)s %(name)s: %(message)s")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
