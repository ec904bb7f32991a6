"""Records to Kafka without ever slowing or failing a payment: a bounded buffer, a background producer,
and a counted drop when the buffer is full.

    async with TapPublisher(bootstrap, "x402.payments", max_buffer=10_000) as pub:
        pub.offer(record)          # never blocks, never raises; callable from any thread

`offer` puts the record in a bounded in-memory buffer and returns at once (True), or counts it as
dropped (False) when the buffer is full. A background task starts the producer (retrying with back-off
while Kafka is unreachable), sends batches with acks="all", and on a failed send keeps the batch and
retries it; the ids are stable, so a record sent twice is counted once by the watcher. On exit the
buffer is flushed for up to `flush_timeout_seconds`; what is left is counted as dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading

from aiokafka import AIOKafkaProducer

from watcher.errors import ClosedError
from watcher.tap.metrics import TapMetrics
from watcher.tap.records import encode, key_of

log = logging.getLogger("watcher.tap.publisher")


class TapPublisher:
    def __init__(self, bootstrap: str, topic: str = "x402.payments", *, max_buffer: int = 10_000,
                 batch_size: int = 500, metrics: TapMetrics | None = None, client_id: str = "spendwatch-tap",
                 request_timeout_ms: int = 10_000, retry_min_seconds: float = 0.2, retry_max_seconds: float = 5.0,
                 flush_timeout_seconds: float = 5.0) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be >= 1")
        self.bootstrap, self.topic = bootstrap, topic
        self.max_buffer, self.batch_size = max_buffer, batch_size
        self.metrics = metrics or TapMetrics()
        self.client_id, self.request_timeout_ms = client_id, request_timeout_ms
        self.retry_min, self.retry_max = retry_min_seconds, retry_max_seconds
        self.flush_timeout = flush_timeout_seconds
        self.published = self.dropped = self.send_failures = 0
        self.connected = False
        self._buf: collections.deque[tuple[str, bytes, bytes]] = collections.deque()
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._state = "new"

    # -- the hot path --------------------------------------------------------------------------
    def offer(self, record: dict) -> bool:
        """Buffer one record for Kafka. Never blocks or raises; False when it was dropped."""
        kind = record.get("type", "?")
        try:
            item = (kind, key_of(record), encode(record))
        except Exception as exc:  # a record we cannot encode is a bug, not a reason to fail a payment
            log.error("tap record %s not encodable, dropped: %r", record.get("id"), exc)
            self._count_drop(kind)
            return False
        with self._lock:
            if self._state != "open" or len(self._buf) >= self.max_buffer:
                full = True
            else:
                self._buf.append(item)
                full = False
                size = len(self._buf)
        if full:
            self._count_drop(kind)
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("tap buffer full or closed (%d records, Kafka %s): %d records dropped so far",
                            self.max_buffer, "up" if self.connected else "unreachable", self.dropped)
            return False
        self.metrics.buffer.set(size)
        self._poke()
        return True

    def _count_drop(self, kind: str) -> None:
        with self._lock:
            self.dropped += 1
        self.metrics.records.labels(kind, "dropped").inc()

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            if threading.get_ident() == self._loop_thread:
                wake.set()
            else:
                loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # loop closed during shutdown
            pass

    @property
    def buffered(self) -> int:
        return len(self._buf)

    # -- lifecycle -----------------------------------------------------------------------------
    async def __aenter__(self) -> TapPublisher:
        if self._state != "new":
            raise ClosedError("a TapPublisher can be started once")
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._state = "open"
        self._task = asyncio.create_task(self._run(), name="tap publisher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._state != "open":
            return
        with self._lock:
            self._state = "closing"
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.flush_timeout)
        except (asyncio.TimeoutError, Exception):
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        left = len(self._buf)
        if left:
            log.warning("tap publisher closed with %d records not sent (Kafka unreachable): dropped", left)
            for kind, _, _ in self._buf:
                self._count_drop(kind)
            self._buf.clear()
        self.metrics.buffer.set(0)
        self._state = "closed"

    def _take(self) -> list[tuple[str, bytes, bytes]]:
        with self._lock:
            n = min(self.batch_size, len(self._buf))
            return [self._buf.popleft() for _ in range(n)]

    async def _start_producer(self) -> AIOKafkaProducer | None:
        delay = self.retry_min
        while True:
            p = AIOKafkaProducer(bootstrap_servers=self.bootstrap, client_id=self.client_id, acks="all",
                                 enable_idempotence=False, linger_ms=1, request_timeout_ms=self.request_timeout_ms)
            try:
                await p.start()
                self.connected = True
                log.info("tap publisher connected to Kafka %s, topic %s", self.bootstrap, self.topic)
                return p
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await p.stop()
                log.warning("tap publisher: Kafka %s unreachable (%r); retrying in %.1f s (records buffer up to "
                            "%d, then are dropped and counted)", self.bootstrap, exc, delay, self.max_buffer)
                if self._state != "open":
                    return None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._closing(), delay)
                if self._state != "open":
                    return None
                delay = min(delay * 2, self.retry_max)

    async def _closing(self) -> None:
        while self._state == "open":
            await asyncio.sleep(0.05)

    async def _run(self) -> None:
        producer = await self._start_producer()
        if producer is None:
            return
        pending: list[tuple[str, bytes, bytes]] = []
        delay = self.retry_min
        try:
            while True:
                if not pending:
                    pending = self._take()
                if not pending:
                    if self._state != "open":
                        return
                    self._wake.clear()
                    if not self._buf:
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), 1.0)
                    continue
                try:
                    futs = [await producer.send(self.topic, value, key=key) for _, key, value in pending]
                    await asyncio.gather(*futs)
                except Exception as exc:
                    self.send_failures += 1
                    for kind, _, _ in pending:
                        self.metrics.records.labels(kind, "failed_retry").inc()
                    log.warning("tap publisher: send of %d records failed (%r); retrying in %.1f s",
                                len(pending), exc, delay)
                    if self._state != "open":
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.retry_max)
                    continue
                delay = self.retry_min
                for kind, _, _ in pending:
                    self.metrics.records.labels(kind, "published").inc()
                self.published += len(pending)
                pending = []
                self.metrics.buffer.set(len(self._buf))
        finally:
            with self._lock:  # a batch in flight when we stop goes back, to be counted as dropped
                self._buf.extendleft(reversed(pending))
            with contextlib.suppress(Exception):
                await producer.stop()
