"""A daemon process with the test detection stage and the breaker, for crash tests.

    python -m tests.breaker.daemon_main CONFIG.json   (kafka settings + breaker tables, as JSON)
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys

from tests.breaker.conftest import DetectStage
from watcher.breaker import BreakerStage, load_breaker_config
from watcher.breaker.service import breaker_services
from watcher.config import load_settings
from watcher.daemon import Daemon


async def main(path: str) -> None:
    raw = json.loads(open(path).read())
    s = load_settings(None, kafka=raw["kafka"], checkpoint={"interval_seconds": raw.get("checkpoint_s", 30)})
    cfg = load_breaker_config(None, **raw["breaker_config"])
    detect = DetectStage()
    stage = BreakerStage(cfg, control=detect)
    daemon = Daemon(s, stages=[detect, stage], services=breaker_services(stage, cfg))
    daemon.install_signal_handlers()
    await daemon.run()


if __name__ == "__main__":
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    asyncio.run(main(sys.argv[1]))
