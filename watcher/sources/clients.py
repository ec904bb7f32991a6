"""Stopping aiokafka clients on the way out, also with the broker gone (no heavy imports: the tap uses it)."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("watcher.sources.clients")
STOP_TIMEOUT_SECONDS = 5.0


async def stop_client(client, what: str, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """Stop an aiokafka consumer or producer within `timeout` each for it and its connections, without
    hiding why we are leaving.

    With the broker gone, aiokafka 0.14's fetcher cancels its in-flight fetches on close and awaits them;
    one caught in its retry back-off re-raises that CancelledError out of `stop()`, before the client
    (metadata task, connections) is closed. It replaced the real error (and the daemon's documented
    message) with a CancelledError traceback. That CancelledError is absorbed and the client closed here;
    a cancellation of the caller itself is not absorbed.
    """
    try:
        await asyncio.wait_for(client.stop(), timeout)
        return
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("%s: stopping it was cut short (Kafka unreachable?); closing its connections", what)
    except Exception as exc:  # TimeoutError included
        log.warning("%s: stopping it failed (%r); closing its connections", what, exc)
    try:
        await asyncio.wait_for(client._client.close(), timeout)
    except Exception as exc:
        log.warning("%s: closing its Kafka client failed (%r)", what, exc)
