"""The embedded broker does not outlive a killed spendwatch: SIGKILL (or the OOM killer) runs no cleanup, and
the memory-only Tansu child used to live on as an orphan, holding its port and every record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.polling import wait_for_sync

pytestmark = pytest.mark.integration

STARTS = {
    "start": "b = TansuBroker().start(); print(b.pid, flush=True); time.sleep(600)",
    "async with": ("async def main():\n"
                   "    async with TansuBroker() as b:\n"
                   "        print(b.pid, flush=True)\n"
                   "        await asyncio.sleep(600)\n"
                   "asyncio.run(main())"),
}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.parametrize("how", sorted(STARTS))
def test_the_embedded_broker_dies_with_a_killed_parent(how):
    code = "import asyncio, time\nfrom watcher.broker import TansuBroker\n" + STARTS[how]
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    broker = None
    try:
        broker = int(parent.stdout.readline())
        assert _alive(broker)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        wait_for_sync(lambda: not _alive(broker), 30, f"the broker (pid {broker}) to end with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
        if broker is not None and _alive(broker):
            os.kill(broker, signal.SIGKILL)
