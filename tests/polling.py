"""Waiting in tests: poll a condition until it holds, with a generous deadline, instead of sleeping a fixed
time and then asserting (on a loaded machine any fixed sleep is too short sometimes). A timeout fails the
test saying what was awaited, and, given `show`, the state last seen.

    await wait_for(lambda: daemon.started.is_set(), 30, "daemon start")            # in async tests
    wait_for_sync(lambda: query(prom, "up"), 30, "Prometheus up")                  # in plain ones
    await stays(lambda: len(receiver.reqs) == 3, 1.0, "three requests, no more")   # nothing changes

`wait_for` returns the first truthy value of the condition, so a test can wait for a list and use it.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


def _timed_out(timeout_s: float, what: str, show: Callable[[], Any] | None) -> AssertionError:
    seen = f"; last seen: {show()}" if show is not None else ""
    return AssertionError(f"timed out after {timeout_s} s waiting for {what}{seen}")


async def wait_for(pred: Callable[[], Any], timeout_s: float, what: str, *, interval_s: float = 0.05,
                   task: asyncio.Task | None = None, show: Callable[[], Any] | None = None) -> Any:
    """Poll `pred` (a plain callable or one returning an awaitable) every `interval_s` until it returns
    something truthy, and return that. Fails after `timeout_s` seconds, naming `what`; fails at once if
    `task` (e.g. the daemon under test) ends first, with its exception if it raised one."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if task is not None and task.done():
            failure = None if task.cancelled() else task.exception()
            raise AssertionError(f"{task.get_name()} ended while waiting for {what}") from failure
        if time.monotonic() > deadline:
            raise _timed_out(timeout_s, what, show)
        await asyncio.sleep(interval_s)


def wait_for_sync(pred: Callable[[], Any], timeout_s: float, what: str, *, interval_s: float = 0.25,
                  show: Callable[[], Any] | None = None) -> Any:
    """`wait_for` for tests that run no event loop: blocks between polls."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(timeout_s, what, show)
        time.sleep(interval_s)


async def stays(pred: Callable[[], Any], seconds: float, what: str, *, interval_s: float = 0.01,
                show: Callable[[], Any] | None = None) -> None:
    """Check that `pred` holds on every poll for `seconds` and for at least `seconds / interval_s` polls,
    failing as soon as it does not: on a loaded machine, where each turn of the event loop takes longer,
    the window stretches so that the rest of the loop (senders, receivers) still gets as many turns."""
    deadline, polls = time.monotonic() + seconds, max(1, round(seconds / interval_s))
    while True:
        if not pred():
            seen = f"; now: {show()}" if show is not None else ""
            raise AssertionError(f"expected {what} for {seconds} s; it stopped holding{seen}")
        polls -= 1
        if polls <= 0 and time.monotonic() > deadline:
            return
        await asyncio.sleep(interval_s)
