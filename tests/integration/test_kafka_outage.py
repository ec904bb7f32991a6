"""Kafka goes away under a running daemon: it stops with the documented one-line error (exit 1 through the
CLI) instead of a CancelledError traceback from aiokafka's consumer stop, which hid what happened."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.integration.helpers import make_settings
from watcher.broker import TansuBroker
from watcher.daemon import Daemon
from watcher.errors import BrokerError

pytestmark = pytest.mark.integration


def test_a_lost_broker_stops_the_daemon_with_a_clear_error(unique):
    async def main():
        async with TansuBroker() as broker:
            daemon = Daemon(make_settings(broker.bootstrap, unique, partitions=2))
            task = asyncio.create_task(daemon.run())
            deadline = time.monotonic() + 60
            while not daemon.shards and time.monotonic() < deadline and not task.done():
                await asyncio.sleep(0.1)
            assert daemon.shards, "the daemon never owned a partition"
            broker.stop()                                   # the broker is gone, with everything it held
            with pytest.raises(BrokerError, match="lost Kafka at .* a restart resumes from the last checkpoint"):
                await asyncio.wait_for(task, 150)

    asyncio.run(main())
