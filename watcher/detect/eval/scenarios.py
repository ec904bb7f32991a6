"""A seeded world: a normal fleet over 24 h plus injected incidents, as topic records with ground truth.

Normal fleet: agents paying 2-6 rate-carded merchants, Poisson per minute with a daily cycle (each agent
its own phase and amplitude); a third are bursty (sessions of 5-15x their rate for 2-10 min), a minute's
expected spend staying under 40% of the per-minute cap as a healthy agent's does; a few payments are refused
for insufficient funds. Every facilitator payment is a settle record followed 1.5 s
later by its confirmed on-chain transfer.

Incidents (each in its own agent, after at least 4 h of normal history):
  runaway_loop        a retry storm paying one endpoint at 2-6x the per-minute cap, for 3 min
  slow_drain          steady spending at ~40x the agent's own rate, under every cap, for 90 min
  compromised_key     1-3 transfers of 2-20 USDC to a fresh address, seen only on-chain
  price_drift         a merchant charges 15-60% above its card (20 merchants, 2 agents each)
  category_budget     an agent starts buying `gpu` calls and runs through its daily category budget
  new_merchant_burst  an agent pays 10 never-seen merchants within 3 min
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from watcher.detect.decision import rfc3339
from watcher.events.addresses import eip55
from watcher.simulate.records import encode, fake_hash, settle_record, transfer_record, verify_record

T0_MS = 1_795_305_600_000          # 2026-11-22T00:00:00Z
HOUR = 3_600_000
MIN = 60_000
CAP_1M_USDC = 2.0
PEAK_SHARE = 0.4                   # a normal agent's busiest minute, as a share of the per-minute cap

BASE_POLICY = """\
version = "eval"

[defaults]
per_payment_max_usdc = 5
category_budgets_usdc = { gpu = 10 }

[defaults.caps]
per_minute_usdc = 2
per_hour_usdc = 30
per_day_usdc = 200

[defaults.escalation]
payment_above_usdc = 2
window = "1h"
window_above_usdc = 20
timeout_seconds = 900
"""


def _addr(*parts) -> str:
    return eip55("0x" + hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:40])


class _Fast:
    """Protocol records from the `watcher.simulate.records` builders, filled by text substitution."""

    P_EID, P_PAYER, P_PAYTO, P_TX, P_NONCE = "EID_PLACEHOLDER", "0x" + "a1" * 20, "0x" + "b2" * 20, \
        "0x" + "c3" * 32, "0x" + "d4" * 32
    P_AMT, P_URL, P_TS, P_BH = 987654321987, "https://placeholder.invalid/x", 946684800123, "0x" + "e5" * 32

    def __init__(self) -> None:
        s = settle_record(event_id=self.P_EID, ts_ms=self.P_TS, payer=self.P_PAYER, pay_to=self.P_PAYTO,
                          amount=self.P_AMT, tx=self.P_TX, resource=self.P_URL, nonce=self.P_NONCE)
        v = verify_record(event_id=self.P_EID, ts_ms=self.P_TS, payer=self.P_PAYER, pay_to=self.P_PAYTO,
                          amount=self.P_AMT, resource=self.P_URL, valid=False, invalid_reason="insufficient_funds")
        t = transfer_record(ts_ms=self.P_TS, payer=self.P_PAYER, to=self.P_PAYTO, amount=self.P_AMT, tx=self.P_TX,
                            status="confirmed", block_number=424242, block_hash=self.P_BH, confirmations=3)
        self.settle = self._split(encode(s).decode())
        self.verify = self._split(encode(v).decode())
        self.transfer = self._split(encode(t).decode())

    def _split(self, text: str) -> str:
        ts_text = text.split('"observedAt":"', 1)[1].split('"', 1)[0]
        text = text.replace("{", "{{").replace("}", "}}")
        for ph, key in ((self.P_BH, "{bh}"), (ts_text, "{ts}"), (self.P_EID, "{eid}"), (self.P_PAYER, "{payer}"),
                        (self.P_PAYTO, "{payto}"), (self.P_TX, "{tx}"), (self.P_NONCE, "{nonce}"),
                        (str(self.P_AMT), "{amt}"), (self.P_URL, "{url}"), ("424242", "{block}")):
            text = text.replace(ph, key)
        return text

    def settle_bytes(self, eid, ts, payer, payto, amt, tx, url) -> bytes:
        return self.settle.format(ts=rfc3339(ts), eid=eid, payer=payer, payto=payto, tx=tx, nonce=tx[:-1] + "f",
                                  amt=amt, url=url).encode()

    def verify_bytes(self, eid, ts, payer, payto, amt, url) -> bytes:
        return self.verify.format(ts=rfc3339(ts), eid=eid, payer=payer, payto=payto, tx="", nonce=fake_hash("n", eid),
                                  amt=amt, url=url).encode()

    def transfer_bytes(self, ts, payer, to, amt, tx) -> bytes:
        block = ts // 2000
        return self.transfer.format(ts=rfc3339(ts), eid="", payer=payer, payto=to, tx=tx, amt=amt, url="",
                                    nonce="", block=block, bh=f"0x{block:064x}").encode()


@dataclass
class Merchant:
    address: str
    url: str
    category: str
    price: int                      # base units
    jitter: float = 0.0             # metered pricing, within the card's tolerance


@dataclass
class Incident:
    scenario: str
    agent: str
    onset_ms: int
    merchant: str | None = None     # price drift: the drifting merchant
    payment: int = 0                # largest single payment of the incident


@dataclass
class World:
    seed: int
    records: list[bytes]
    incidents: list[Incident]
    normal_agents: list[str]
    hours: float
    policy_text: str
    # agent -> (ts ms, amount, settle id or "", transfer id), in time order
    payments: dict[str, list[tuple[int, int, str, str]]] = field(default_factory=dict)
    merchants: list[Merchant] = field(default_factory=list)


class _Builder:
    def __init__(self, seed: int, hours: float) -> None:
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.hours = hours
        self.end = T0_MS + int(hours * HOUR)
        self.pay: list[tuple[int, str, Merchant | str, int, bool]] = []   # ts, agent, merchant, amount, chain-only
        self.fails: list[tuple[int, str, Merchant, int]] = []

    def merchants(self, tag: str, n: int, categories, price_lo: float, price_hi: float) -> list[Merchant]:
        rng = self.rng
        out = []
        for i in range(n):
            price = float(np.exp(rng.uniform(np.log(price_lo), np.log(price_hi))))
            out.append(Merchant(_addr(self.seed, tag, i), f"https://{tag}{i}.example/v1/call",
                                categories[i % len(categories)], max(1, int(price * 1e6)),
                                0.02 if rng.random() < 0.3 else 0.0))
        return out

    def normal(self, agent: str, pool: list[Merchant], rate_scale: float = 1.0, start: int | None = None) -> float:
        """Poisson-per-minute payments with a daily cycle; returns the mean spend in base units per minute."""
        rng = self.rng
        start = T0_MS if start is None else start
        minutes = (self.end - start) // MIN
        lam = float(np.clip(np.exp(rng.normal(np.log(0.15), 0.8)), 0.01, 1.0)) * rate_scale
        amp, phase = rng.uniform(0.3, 0.8), rng.uniform(0, 24 * 60)
        t_min = np.arange(minutes) + (start - T0_MS) / MIN
        rate = lam * (1 + amp * np.sin(2 * np.pi * (t_min - phase) / (24 * 60)))
        if rng.random() < 0.33:                            # bursty but benign
            n_b = rng.poisson(minutes / 240)
            for s in rng.integers(0, max(1, minutes - 10), n_b):
                rate[s: s + rng.integers(2, 11)] *= rng.uniform(5, 15)
        k = rng.integers(2, 7)
        mine = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
        w = 1.0 / np.arange(1, len(mine) + 1)
        w /= w.sum()
        # a healthy agent's peaks stay well under its per-minute cap (operators set caps above them): a
        # minute's expected spend is at most PEAK_SHARE of the cap, even at its dearest merchant
        top = max(pool[j].price for j in mine)
        rate = np.minimum(rate, PEAK_SHARE * CAP_1M_USDC * 1e6 / top)
        counts = rng.poisson(rate)
        n = int(counts.sum())
        ts = start + (np.repeat(np.arange(minutes), counts) * MIN + rng.integers(0, MIN, n))
        which = rng.choice(mine, size=n, p=w)
        for t, j in zip(ts.tolist(), which.tolist()):
            m = pool[j]
            amt = m.price if not m.jitter else max(1, int(m.price * (1 + rng.uniform(-m.jitter, m.jitter))))
            self.pay.append((t, agent, m, amt, False))
            if rng.random() < 0.004:
                self.fails.append((t - 300, agent, m, amt))
        mean_price = float(np.dot(w, [pool[j].price for j in mine]))
        return lam * mean_price


def build_world(seed: int = 1, *, n_normal: int = 200, hours: float = 24.0, n_each: int = 20) -> World:
    b = _Builder(seed, hours)
    rng = b.rng
    cats = ("search", "llm", "data", "compute", "storage")
    pool = b.merchants("m", 40, cats, 0.001, 0.05)
    drift = b.merchants("drift", n_each, cats, 0.005, 0.05)
    gpu = b.merchants("gpu", 3, ("gpu",), 0.25, 0.25)
    for m in drift:
        m.jitter = 0.0
    incidents: list[Incident] = []
    normal = [_addr(seed, "normal", i) for i in range(n_normal)]
    for a in normal:
        b.normal(a, pool)

    def onset() -> int:
        return T0_MS + int(rng.uniform(4, hours - 2) * HOUR)

    pricey = [m for m in pool if m.price >= 20_000] or sorted(pool, key=lambda m: -m.price)[:5]
    for i in range(n_each):                                   # runaway loop
        a = _addr(seed, "runaway", i)
        b.normal(a, pool)
        t0, m = onset(), pricey[i % len(pricey)]
        per_s = min(20.0, rng.uniform(2, 6) * CAP_1M_USDC * 1e6 / 60 / m.price)
        n = int(per_s * 180)
        times = t0 + np.cumsum(rng.exponential(1000 / per_s, n)).astype(np.int64)
        for t in times.tolist():
            b.pay.append((t, a, m, m.price, False))
        incidents.append(Incident("runaway_loop", a, t0, m.address, m.price))
    for i in range(n_each):                                   # slow drain
        a = _addr(seed, "drain", i)
        base = b.normal(a, pool)
        t0 = onset()
        m = pricey[(i + 3) % len(pricey)]
        per_min = float(np.clip(40 * base, 150_000, 0.6 * CAP_1M_USDC * 1e6))
        gap_ms = int(MIN * m.price / per_min)
        for t in range(t0, min(t0 + 90 * MIN, b.end), max(gap_ms, 200)):
            b.pay.append((t + int(rng.integers(0, 200)), a, m, m.price, False))
        incidents.append(Incident("slow_drain", a, t0, m.address, m.price))
    for i in range(n_each):                                   # compromised key
        a = _addr(seed, "victim", i)
        b.normal(a, pool)
        t0, thief = onset(), _addr(seed, "thief", i)
        t, top = t0, 0
        for _ in range(int(rng.integers(1, 4))):
            amt = int(rng.uniform(2, 20) * 1e6)
            b.pay.append((t, a, thief, amt, True))
            top = max(top, amt)
            t += int(rng.uniform(30, 90) * 1000)
        incidents.append(Incident("compromised_key", a, t0, thief, top))
    for i, m in enumerate(drift):                             # price drift
        t0 = onset()
        factor = rng.uniform(1.15, 1.6)
        for k in range(2):
            a = _addr(seed, "drift-agent", i, k)
            b.normal(a, pool, 0.5)
            lam = rng.uniform(0.1, 0.3)
            n = rng.poisson(lam * (b.end - T0_MS) / MIN)
            for t in np.sort(rng.integers(T0_MS, b.end, n)).tolist():
                b.pay.append((t, a, m, m.price if t < t0 else int(m.price * factor), False))
            incidents.append(Incident("price_drift", a, t0, m.address, int(m.price * factor)))
    for i in range(n_each // 2):                              # category budget
        a = _addr(seed, "gpu-user", i)
        b.normal(a, pool)
        t0, m = onset(), gpu[i % len(gpu)]
        for t in range(t0, min(t0 + 60 * MIN, b.end), 30_000):
            b.pay.append((t + int(rng.integers(0, 500)), a, m, m.price, False))
        incidents.append(Incident("category_budget", a, t0, m.address, m.price))
    for i in range(n_each // 2):                              # new-merchant burst
        a = _addr(seed, "explorer", i)
        b.normal(a, pool)
        t0 = onset()
        fresh = b.merchants(f"fresh{i}-", 10, ("unknown",), 0.005, 0.02)
        for k, m in enumerate(fresh):
            b.pay.append((t0 + k * 18_000 + int(rng.integers(0, 3000)), a, m, m.price, False))
        incidents.append(Incident("new_merchant_burst", a, t0, None, max(m.price for m in fresh)))

    return _assemble(b, incidents, normal, pool + drift + gpu)


def _assemble(b: _Builder, incidents: list[Incident], normal: list[str], carded: list[Merchant]) -> World:
    fast = _Fast()
    recs: list[tuple[int, int, bytes]] = []
    payments: dict[str, list[tuple[int, int, str, str]]] = {}
    b.pay.sort(key=lambda p: (p[0], p[1]))
    seq = 0
    for k, (t, agent, m, amt, chain_only) in enumerate(b.pay):
        tx = f"0x{b.seed % 2**32:08x}{k:056x}"
        to = m if isinstance(m, str) else m.address
        tid = f"8453:{tx}:0"
        if chain_only:
            sid = ""
        else:
            sid = f"ev-{b.seed}-{k}"
            recs.append((t, seq, fast.settle_bytes(sid, t, agent, to, amt, tx, m.url)))
            seq += 1
        recs.append((t + 1500, seq, fast.transfer_bytes(t + 1500, agent, to, amt, tx)))
        seq += 1
        payments.setdefault(agent, []).append((t, amt, sid, tid))
    for k, (t, agent, m, amt) in enumerate(b.fails):
        recs.append((t, seq, fast.verify_bytes(f"vf-{b.seed}-{k}", t, agent, m.address, amt, m.url)))
        seq += 1
    recs.sort(key=lambda r: (r[0], r[1]))
    return World(b.seed, [r[2] for r in recs], incidents, normal, b.hours, BASE_POLICY + rate_cards(carded),
                 payments, carded)


def rate_cards(merchants: list[Merchant]) -> str:
    """The world's rate card as policy TOML: each merchant's category and published price, 5% tolerance."""
    return "".join(f'\n[[rate_card]]\nmerchant = "{m.address}"\ncategory = "{m.category}"\n'
                   f'price_usdc = {m.price / 1e6:.6f}\nversion = "2026-11"\ntolerance_pct = 5\n' for m in merchants)
