"""Synthetic x402 traffic: a fleet of agents paying merchants in several categories.

Daily rhythm (a sine over the UTC hour), bursty-but-benign agents, redeliveries, on-chain transfers for
part of the settles (joined by tx hash), failed verifications, a few malformed records, and one agent
that runs away (a retry storm paying the same endpoint). Deterministic for a seed. `Truth` records what
an exact watcher must end up with, so tests can compare.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field

from watcher.events.addresses import eip55
from watcher.simulate.records import encode, fake_hash, settle_record, transfer_record, verify_record

CATEGORIES = {"data": (2_000, 20_000), "search": (1_000, 5_000), "inference": (5_000, 80_000),
              "compute": (20_000, 200_000), "news": (500, 3_000), "storage": (1_000, 10_000)}


def wallet(seed: int, kind: str, i: int) -> str:
    return eip55("0x" + hashlib.sha256(f"{seed}/{kind}/{i}".encode()).hexdigest()[:40])


@dataclass
class Merchant:
    address: str
    category: str
    price: int
    url: str


@dataclass
class Agent:
    name: str
    wallet: str
    team: str
    rate_per_min: float
    merchants: list[int]
    bursty: bool


@dataclass
class Truth:
    """What was published that a correct watcher must count (unique, valid spend per agent)."""

    spend: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    payments: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    published: int = 0
    malformed: int = 0
    duplicates: int = 0


MALFORMED = [
    b"not json at all",
    b'{"type": "x402.settle", "id": "m"}',
    b'{"type": "x402.unknown", "id": "m"}',
    b"",
]


class Fleet:
    def __init__(self, *, agents: int = 100, merchants: int = 30, seed: int = 7, runaway_after_s: float = 20.0,
                 runaway_per_s: float = 20.0, chain_ratio: float = 0.5, duplicate_ratio: float = 0.01,
                 malformed_ratio: float = 0.005, verify_fail_ratio: float = 0.01) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        cats = list(CATEGORIES)
        self.merchants = []
        for i in range(merchants):
            cat = cats[i % len(cats)]
            lo, hi = CATEGORIES[cat]
            self.merchants.append(Merchant(wallet(seed, "merchant", i), cat, rng.randint(lo, hi),
                                           f"https://{cat}-{i}.merchant.example/v1/"))
        self.agents = []
        for i in range(agents):
            picks = rng.sample(range(merchants), k=min(merchants, rng.randint(2, 5)))
            self.agents.append(Agent("agent-runaway" if i == 0 else f"agent-{i:04d}", wallet(seed, "agent", i),
                                     f"team-{i % 5}", rng.lognormvariate(0.0, 0.8), picks, rng.random() < 0.1))
        self.runaway = self.agents[0]
        # the retry storm hammers one endpoint: the dearest in the fleet
        self.runaway_merchant = max(self.merchants, key=lambda m: m.price)
        self.runaway_after_ms = int(runaway_after_s * 1000)
        self.runaway_per_s = runaway_per_s
        self.chain_ratio, self.duplicate_ratio = chain_ratio, duplicate_ratio
        self.malformed_ratio, self.verify_fail_ratio = malformed_ratio, verify_fail_ratio
        self.truth = Truth()
        self.seq = 0
        self.block = 1000
        self.seed = seed
        self._bursting: dict[int, int] = {}
        self.blocked: set[str] = set()  # wallets a frozen breaker stops: their payments are refused
        self._later: list[tuple[int, int, tuple[str, bytes, bytes]]] = []  # chain records not yet mined
        self.block_ms = 2_000

    def categories(self) -> dict[str, str]:
        return {m.address: m.category for m in self.merchants}

    def names(self) -> dict[str, str]:
        return {a.wallet: a.name for a in self.agents}

    @staticmethod
    def rhythm(ts_ms: int) -> float:
        hour = (ts_ms / 3_600_000) % 24
        return 0.6 + 0.4 * math.sin(2 * math.pi * (hour - 8) / 24)

    # -- one payment -------------------------------------------------------------------------
    def _payment(self, agent: Agent, merchant: Merchant, ts_ms: int) -> list[tuple[str, bytes, bytes]]:
        rng, t = self.rng, self.truth
        self.seq += 1
        eid = f"sim-{self.seed}-{self.seq}"
        tx = fake_hash(self.seed, "tx", self.seq)
        amount = max(1, int(merchant.price * rng.uniform(0.95, 1.05)))
        key = agent.wallet.encode()
        out = []
        if agent.wallet in self.blocked:  # the facilitator refuses a frozen payer at /verify
            out.append(("payments", key, encode(verify_record(
                event_id=eid + "-v", ts_ms=ts_ms, payer=agent.wallet, pay_to=merchant.address, amount=amount,
                resource=merchant.url, valid=False, invalid_reason="payer_frozen"))))
            return out
        if rng.random() < self.verify_fail_ratio:
            out.append(("payments", key, encode(verify_record(
                event_id=eid + "-v", ts_ms=ts_ms, payer=agent.wallet, pay_to=merchant.address, amount=amount,
                resource=merchant.url, valid=False, invalid_reason="insufficient_funds"))))
            return out
        rec = encode(settle_record(event_id=eid, ts_ms=ts_ms, payer=agent.wallet, pay_to=merchant.address,
                                   amount=amount, tx=tx, resource=merchant.url, version=2 if self.seq % 4 else 1))
        out.append(("payments", key, rec))
        t.spend[agent.wallet] += amount
        t.payments[agent.wallet] += 1
        if rng.random() < self.duplicate_ratio:
            out.append(("payments", key, rec))
            t.duplicates += 1
        if rng.random() < self.chain_ratio:
            # the transfer is mined a block later and confirmed a few blocks after that
            self.block += 1
            for status, delay in (("pending", self.block_ms), ("confirmed", 5 * self.block_ms)):
                rec = ("chain", key, encode(transfer_record(
                    ts_ms=ts_ms + delay, payer=agent.wallet, to=merchant.address, amount=amount, tx=tx,
                    block_number=self.block, status=status, authorizer=agent.wallet,
                    confirmations=0 if status == "pending" else 5)))
                heapq.heappush(self._later, (ts_ms + delay, self.seq * 2 + (status == "confirmed"), rec))
        return out

    def _malformed(self) -> tuple[str, bytes, bytes]:
        self.truth.malformed += 1
        return ("payments", b"bad", self.rng.choice(MALFORMED))

    # -- traffic ---------------------------------------------------------------------------------
    def tick(self, start_ms: int, now_ms: int, dt_ms: int, rate_per_s: float) -> list[tuple[str, bytes, bytes]]:
        """Records for the interval [now_ms, now_ms + dt_ms): about rate_per_s payments/s in all."""
        rng = self.rng
        out: list[tuple[str, bytes, bytes]] = []
        weights = []
        for i, a in enumerate(self.agents):
            w = a.rate_per_min
            if a.bursty:
                until = self._bursting.get(i, 0)
                if until < now_ms and rng.random() < dt_ms / 600_000:
                    self._bursting[i] = until = now_ms + 30_000
                if until >= now_ms:
                    w *= 8
            weights.append(w)
        n = self._poisson(rate_per_s * dt_ms / 1000 * self.rhythm(now_ms))
        for idx in rng.choices(range(len(self.agents)), weights=weights, k=n):
            a = self.agents[idx]
            m = self.merchants[rng.choice(a.merchants)]
            out.extend(self._payment(a, m, now_ms + rng.randrange(max(1, dt_ms))))
            if rng.random() < self.malformed_ratio:
                out.append(self._malformed())
        if now_ms - start_ms >= self.runaway_after_ms:
            m = self.runaway_merchant
            for _ in range(self._poisson(self.runaway_per_s * dt_ms / 1000)):
                out.extend(self._payment(self.runaway, m, now_ms + rng.randrange(max(1, dt_ms))))
        while self._later and self._later[0][0] < now_ms + dt_ms:
            out.append(heapq.heappop(self._later)[2])
        self.truth.published += len(out)
        return out

    def flush(self) -> list[tuple[str, bytes, bytes]]:
        """The chain records still waiting to be mined (at the end of a finite stream)."""
        out = [heapq.heappop(self._later)[2] for _ in range(len(self._later))]
        self.truth.published += len(out)
        return out

    def _poisson(self, lam: float) -> int:
        if lam <= 0:
            return 0
        if lam > 30:
            return max(0, int(round(self.rng.gauss(lam, math.sqrt(lam)))))
        k, p, l_ = 0, 1.0, math.exp(-lam)
        while True:
            p *= self.rng.random()
            if p <= l_:
                return k
            k += 1

    def events(self, n_payments: int, start_ms: int, rate_per_s: float = 200.0) -> list[tuple[str, bytes, bytes]]:
        """A finite stream of about n_payments payments, in event time from start_ms (for tests, bench)."""
        out: list[tuple[str, bytes, bytes]] = []
        now = start_ms
        while self.seq < n_payments:
            out.extend(self.tick(start_ms, now, 1000, rate_per_s))
            now += 1000
        out.extend(self.flush())
        return out
