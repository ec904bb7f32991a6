"""Helpers for detection tests: build protocol records, decode them, feed shard + detector."""

from __future__ import annotations

import pytest

from watcher.detect import Detector, Policy
from watcher.events.decode import Decoder
from watcher.pipeline.shard import Shard
from watcher.simulate.records import encode, fake_hash, settle_record, transfer_record, verify_record

T0 = 1_795_305_600_000
AGENT = "0x" + "11" * 20
MERCHANT = "0x" + "22" * 20


class Harness:
    def __init__(self, policy_text: str = "") -> None:
        self.policy = Policy.from_text(policy_text) if policy_text else Policy.default()
        self.detector = Detector(self.policy)
        self.shard = Shard(categorize=self.detector.categorize)
        self.decoder = Decoder(max_future_skew_ms=None)
        self.n = 0
        self.decisions = []

    def settle(self, ts, amount, agent=AGENT, merchant=MERCHANT, resource="https://api.example/v1/data"):
        self.n += 1
        return encode(settle_record(event_id=f"e{self.n}", ts_ms=ts, payer=agent, pay_to=merchant, amount=amount,
                                    tx=fake_hash("tx", self.n), resource=resource))

    def transfer(self, ts, amount, agent=AGENT, to=MERCHANT):
        self.n += 1
        return encode(transfer_record(ts_ms=ts, payer=agent, to=to, amount=amount, tx=fake_hash("tx", self.n),
                                      status="confirmed"))

    def failed_verify(self, ts, agent=AGENT, reason="insufficient_funds"):
        self.n += 1
        return encode(verify_record(event_id=f"v{self.n}", ts_ms=ts, payer=agent, pay_to=MERCHANT, amount=1000,
                                    valid=False, invalid_reason=reason))

    def feed(self, records):
        batch = [self.decoder.decode(r) for r in records]
        out = self.shard.apply(batch)
        ds = self.detector.on_batch(out, self.shard, self.shard.watermark_ms, batch)
        ds += self.detector.tick(self.shard.watermark_ms)
        self.decisions += ds
        return ds


@pytest.fixture
def harness():
    return Harness
