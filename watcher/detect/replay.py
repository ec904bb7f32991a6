"""Offline replay: recorded topic records -> the same decode, shard and detector -> decisions.

Time comes from the events. Batches are cut when the event time crosses a 10 s boundary (the finest
bucket of the default windows, so window rules are exact: watcher/pipeline/eventtime.py; the daemon cuts
the same way) or at `batch_max` records. After each batch the
detector's clock is ticked to the shard's watermark, so unanswered escalations freeze as they would live.
Lines that fail decoding are counted by reason and skipped (or stop the run with `strict`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator

from watcher.detect.decision import Decision
from watcher.detect.detector import Detector
from watcher.detect.policy import Policy
from watcher.errors import EventError
from watcher.events.decode import Decoder
from watcher.pipeline.categories import rate_card_first
from watcher.pipeline.eventtime import CUT_MS
from watcher.pipeline.shard import Shard, ShardConfig

if TYPE_CHECKING:
    from watcher.config import EventSettings, Settings



@dataclass
class ReplayStats:
    lines: int = 0
    events: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    decisions: dict[str, int] = field(default_factory=lambda: {"observe": 0, "warn": 0, "escalate": 0,
                                                                   "freeze": 0})
    seconds: float = 0.0

    @property
    def events_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {"lines": self.lines, "events": self.events, "rejected": self.rejected, "batches": self.batches,
                "decisions": self.decisions, "seconds": round(self.seconds, 3),
                "events_per_second": round(self.events_per_second)}


class Replay:
    """Folds recorded lines through a fresh Shard and Detector (or the ones given)."""

    def __init__(self, policy: Policy | None = None, *, shard_config: ShardConfig = ShardConfig(),
                 batch_max: int = 20_000, strict: bool = False, detector: Detector | None = None,
                 shard: Shard | None = None, categories: dict[str, str] | None = None,
                 events: EventSettings | None = None) -> None:
        """`shard_config`, `categories` and `events`: a deployment's windows, dedupe and finding delays,
        [categories] table and record limits (`Replay.for_settings`); the defaults otherwise."""
        self.detector = detector or Detector(policy)
        self.shard = shard or Shard(shard_config, rate_card_first(self.detector.categorize, categories))
        limits = {} if events is None else {"max_event_bytes": events.max_event_bytes,
                                            "extra_chain_ids": frozenset(events.extra_chain_ids)}
        self.decoder = Decoder(max_future_skew_ms=None, **limits)
        self.batch_max = batch_max
        self.strict = strict
        self.stats = ReplayStats()

    @classmethod
    def for_settings(cls, policy: Policy | None, settings: Settings, **kwargs) -> "Replay":
        """As `spendwatch run` with these settings would decide: its windows, dedupe horizon, finding delays,
        [categories] and record limits. A policy this configuration cannot apply is a ConfigError."""
        if policy is not None:
            policy.check_windows([w.name for w in settings.windows])
        return cls(policy, shard_config=settings.shard_config(), categories=settings.categories,
                   events=settings.events, **kwargs)

    def run(self, lines: Iterable[bytes], *, drain_ms: int = 0) -> Iterator[Decision]:
        t0 = time.perf_counter()
        st = self.stats
        decode, batch_max = self.decoder.decode, self.batch_max
        batch: list = []
        append = batch.append
        bucket = -1
        n = st.lines
        try:
            for raw in lines:  # a trailing newline is JSON whitespace: the decoder takes the line as it is
                n += 1
                try:
                    obs = decode(raw)
                except EventError as exc:
                    if not raw.strip():
                        continue
                    if self.strict:
                        raise EventError(exc.reason, f"line {n}: {exc.detail}") from None
                    st.rejected[exc.reason] = st.rejected.get(exc.reason, 0) + 1
                    continue
                b = obs.ts_ms // CUT_MS
                if b > bucket or len(batch) >= batch_max:
                    if batch:
                        st.lines = n - 1
                        yield from self._flush(batch)
                        batch = []
                        append = batch.append
                    if b > bucket:
                        bucket = b
                append(obs)
            st.lines = n
            if batch:
                yield from self._flush(batch)
            if drain_ms:
                yield from self.advance(self.shard.watermark_ms + drain_ms)
        finally:
            st.lines = n
            st.seconds += time.perf_counter() - t0

    def _flush(self, batch: list) -> list[Decision]:
        st = self.stats
        st.events += len(batch)
        st.batches += 1
        shard, det = self.shard, self.detector
        out = shard.apply(batch)
        ds = det.on_batch(out, shard, shard.watermark_ms, batch)
        ds += det.tick(shard.watermark_ms)
        for d in ds:
            st.decisions[d.kind] += 1
        return ds

    def advance(self, now_ms: int) -> list[Decision]:
        """Move event time forward with no event: join deadlines and escalation timeouts fire."""
        from watcher.pipeline.shard import Outcome

        found = self.shard.advance(now_ms)
        ds = self.detector.on_batch(Outcome(findings=found), self.shard, now_ms) if found else []
        ds += self.detector.tick(now_ms)
        for d in ds:
            self.stats.decisions[d.kind] += 1
        return ds


def replay_file(events_path: str, out_path: str, policy: Policy | None = None, *, drain_ms: int = 0,
                strict: bool = False, settings: Settings | None = None) -> ReplayStats:
    """Replay a JSON-lines file of topic records; write decisions as JSON lines ('-' for stdout).
    `settings`: the deployment's configuration (`Replay.for_settings`)."""
    import sys

    from watcher.detect.decision import encode_decision

    rp = Replay.for_settings(policy, settings, strict=strict) if settings else Replay(policy, strict=strict)
    with open(events_path, "rb") as f:  # first: a mistyped events path must not empty the output
        out = sys.stdout.buffer if out_path == "-" else open(out_path, "wb")
        try:
            for d in rp.run(f, drain_ms=drain_ms):
                out.write(encode_decision(d) + b"\n")
        finally:
            if out is not sys.stdout.buffer:
                out.close()
            else:
                out.flush()
    return rp.stats
