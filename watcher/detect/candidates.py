"""The candidate builders of the detector: each turns one part of a shard's outcome into candidates.

    _payments      the batch's new spend (deltas), per agent row; frozen agents' payments are skipped
      _windows       caps per rolling window (`cap_1m`, `cap_1h`, `cap_24h`) and `escalate_window`
      _categories    category budgets over 24 h (`category_budget`)
      _new_payments  one payment: `payment_ceiling`, `escalate_payment`, merchant lists, `unknown_payee`,
                     `price_drift`; then
      _models        the per-agent baselines (`baseline.spend_rate`, `baseline.payment_size`,
                     `new_merchant_burst`) and the fleet model (`fleet.hst`)
      _settled_after_transfer  a settle that followed its payment's transfer (`Delta.move`): merchant lists
                     and `price_drift` with the settle's merchant, resource and category, where they judge
                     otherwise than the transfer's facts did (each payment judged once); no cap, no model
    _signals       refused verifications (`failed_verifications`)
    _findings      the join's findings (`finding.<kind>`)

A candidate names the events behind it (`Candidate.event_ids`): the payment or signal that crossed the
threshold; for the count rules, every event counted, in time order, the crossing one last
(`failed_verifications`: the refused verifications in its window, at most FAIL_SLOTS = 64, the rule's
largest count; `new_merchant_burst`: the payments to first-time merchants in its window, at most
NEWM_SLOTS = 16, its largest count; see watcher/detect/evidence.py); for a finding, its payment's records,
the settle first, at most FINDING_IDS = 64, as many as a count rule (the finding names them all).

`Candidates` is a mixin of `Detector` (watcher/detect/detector.py), which owns the state it reads and
writes: `index`, `agents`, `table`, `base`, `fleet`, `frozen`, `fail_ring`, `fail_ptr`, `fail_ids`,
`known_merchants`,
`ratecard`, `policy`, `score_sink`.
"""

from __future__ import annotations

import logging

import numpy as np

from watcher.detect.baselines import merchant_hash
from watcher.detect.rules import CAP_WINDOWS, NO_LIMIT, first_crossings, in_window, merchant_verdict
from watcher.detect.verdicts import Candidate
from watcher.events.decode import MAX_TRACKED_AMOUNT
from watcher.events.observation import Kind, Observation
from watcher.money import fmt_usdc
from watcher.pipeline.shard import category_key

log = logging.getLogger("watcher.detect")

USDC = "usdc_base_units"
FAIL_SLOTS = 64
FINDING_IDS = FAIL_SLOTS   # a finding's decision names its payment's first records (the settle first), as many
                           # as a count rule names at most; the finding on watcher.findings names them all
KNOWN_MERCHANTS_MAX = 200_000


def reports_payee(o: Observation) -> bool:
    """A facilitator names `o.merchant` as a payee the agent meant to pay: a settle, or a verification it
    accepted (which comes before the payment's transfer is even sent)."""
    return (o.kind == Kind.SETTLE and o.status == "settled") or (o.kind == Kind.VERIFY and o.status == "valid")


def first_reports(batch: list[Observation]) -> dict[str, int]:
    """merchant -> the batch index of its first facilitator report in `batch` (stream order)."""
    first: dict[str, int] = {}
    for k, o in enumerate(batch):
        if reports_payee(o):
            first.setdefault(o.merchant, k)
    return first


class Candidates:
    def _payments(self, deltas, shard, batch, cands: list[Candidate], positions=(), moves=()) -> None:
        n = len(deltas)
        index, new_row = self.index, self._new_row
        rows = np.fromiter(((index.get(d.agent) if d.agent in index else new_row(d.agent)) for d in deltas),
                           np.int64, n)
        ts = np.fromiter((d.ts_ms for d in deltas), np.int64, n)
        amt = np.fromiter((d.amount for d in deltas), np.int64, n)
        cnt = np.fromiter((d.count for d in deltas), np.int64, n)
        live = ~self.frozen[rows]
        if not live.any():
            return
        unmoved = live
        if moves:   # a moving delta changes no agent total: the caps do not judge it again
            unmoved = live.copy()
            unmoved[moves] = False
        self._windows(deltas, shard, rows, ts, amt, unmoved, cands)
        self._categories(deltas, shard, rows, ts, live, cands)
        ni = np.nonzero((cnt > 0) & live)[0]
        if len(ni):
            self._new_payments(deltas, ni, rows, ts, amt, batch, cands, positions)
        if moves and batch:
            self._settled_after_transfer(deltas, moves, rows, live, cands)

    def _windows(self, deltas, shard, rows, ts, amt, live, cands) -> None:
        aw = shard.agents
        u_rows, keys = np.unique(rows, return_inverse=True)
        srows = np.fromiter((aw.index[bytes.fromhex(self.agents[r][2:])] for r in u_rows), np.int64, len(u_rows))
        sums, _ = aw.totals(srows)
        now = aw.watermark_ms
        cols = {s.name: (i, s) for i, s in enumerate(aw.specs)}
        checks = [(rule, wname, self.table.caps[rows, k]) for k, (rule, wname, _) in enumerate(CAP_WINDOWS)]
        esc = self.table.esc_window[rows]
        on = esc < NO_LIMIT
        if on.any():  # each agent's own escalation window (a team or agent may override the default's)
            wins = np.array([self.table.limits[r].escalation.window for r in u_rows.tolist()])[keys]
            for w in np.unique(wins[on]).tolist():
                checks.append(("escalate_window", w, np.where(wins == w, esc, NO_LIMIT)))
        monotone = bool((amt >= 0).all())
        for rule, wname, limits in checks:
            if wname not in cols:
                if (limits < NO_LIMIT).any():
                    self._unwindowed_rule(rule, wname)
                continue
            col, spec = cols[wname]
            if monotone and not (sums[keys, col] > limits).any():
                continue            # running totals only grow within the batch: nobody can cross
            inw = in_window(ts, now, spec.granularity_ms, spec.buckets) & live
            idx, run = first_crossings(keys, amt, inw, sums[:, col], limits)
            for i, total in zip(idx.tolist(), run.tolist()):
                d = deltas[i]
                cands.append(Candidate(i, d.ts_ms, int(rows[i]), rule, "policy", total, int(limits[i]), USDC,
                                       wname, [d.event_id],
                                       f"spent {fmt_usdc(total)} USDC in {wname}, limit {fmt_usdc(int(limits[i]))}",
                                       category=d.category))

    def _categories(self, deltas, shard, rows, ts, live, cands) -> None:
        hb = self.table.has_budgets[rows] & live
        if not hb.any():
            return
        idx = np.nonzero(hb)[0]
        limits_of = self.table.limits
        cw = shard.categories
        sel, amts, lims, ckeys = [], [], [], []
        for i in idx.tolist():
            d = deltas[i]
            budgets = limits_of[rows[i]].category_budgets_usdc
            a, mv = d.amount, d.move
            if mv is not None:   # a settle after its transfer: the payment moves from mv.category to d.category
                if mv.category == d.category:
                    continue
                a = min(mv.amount, MAX_TRACKED_AMOUNT)   # several transfers can count more than an int64 holds
                if mv.category is not None and budgets.get(mv.category):   # leaving: never a crossing there
                    old = category_key(d.agent, mv.category)
                    if old in cw.index:
                        sel.append(i)
                        amts.append(-a)
                        lims.append(NO_LIMIT)
                        ckeys.append(old)
            if d.category is None:
                continue
            budget = budgets.get(d.category)
            if budget:
                sel.append(i)
                amts.append(a)
                lims.append(int(round(budget * 1_000_000)))
                ckeys.append(category_key(d.agent, d.category))
        if not sel:
            return
        local: dict[bytes, int] = {}
        keys = np.fromiter((local.setdefault(k, len(local)) for k in ckeys), np.int64, len(ckeys))
        srows = np.fromiter((cw.index[k] for k in local), np.int64, len(local))
        found = [(i, s) for i, s in enumerate(cw.specs) if s.name == "24h"]
        if not found:
            self._unwindowed_rule("category_budget", "24h")
            return
        col, spec = found[0]
        sums, _ = cw.totals(srows)
        sel_a = np.array(sel)
        inw = in_window(ts[sel_a], cw.watermark_ms, spec.granularity_ms, spec.buckets)
        hit, run = first_crossings(keys, np.array(amts, np.int64), inw, sums[:, col], np.array(lims, np.int64))
        for j, total in zip(hit.tolist(), run.tolist()):
            i = sel[j]
            d = deltas[i]
            cands.append(Candidate(i, d.ts_ms, int(rows[i]), "category_budget", "policy", total, lims[j], USDC,
                                   "24h", [d.event_id], f"spent {fmt_usdc(total)} USDC on {d.category} in 24h, "
                                   f"budget {fmt_usdc(lims[j])}", category=d.category))

    def _unwindowed_rule(self, rule: str, window: str) -> None:
        if (rule, window) not in self._unwindowed:
            self._unwindowed.add((rule, window))
            log.error("%s needs the rolling window %r, which the configuration's [[windows]] lacks: the rule is "
                      "not applied; add a [[windows]] entry named %r, or turn the limit off in the policy",
                      rule, window, window)

    def _new_payments(self, deltas, ni, rows, ts, amt, batch, cands, positions=()) -> None:
        have = bool(batch)  # the merchant and resource of each payment are known (the deltas carry them)
        t = self.table
        lookup = self.ratecard.lookup
        known, card_known = self.known_merchants, self.ratecard.known
        reports: dict[str, int] | None = None   # first_reports(batch), on first need (an unknown payee is rare)
        merchants: list[str] = []
        ceil, escp, lists = t.ceiling, t.esc_payment, t.has_lists
        for i in ni.tolist():
            d = deltas[i]
            m = d.merchant if have else ""
            merchants.append(m)
            r = int(rows[i])
            a = d.amount
            if a > ceil[r]:
                cands.append(Candidate(i, d.ts_ms, r, "payment_ceiling", "policy", a, int(ceil[r]), USDC, "payment",
                                       [d.event_id], f"one payment of {fmt_usdc(a)} USDC, ceiling "
                                       f"{fmt_usdc(int(ceil[r]))}", m or None, d.category))
            if a > escp[r]:
                cands.append(Candidate(i, d.ts_ms, r, "escalate_payment", "policy", a, int(escp[r]), USDC,
                                       "payment", [d.event_id], f"payment of {fmt_usdc(a)} USDC needs approval "
                                       f"above {fmt_usdc(int(escp[r]))}", m or None, d.category))
            if not have:
                continue
            if lists[r]:
                # a transfer has no resource: an allow-list its settle may still satisfy waits for the settle
                rule = merchant_verdict(t.limits[r], m, d.resource, d.category, settled=d.kind != Kind.TRANSFER)
                if rule is not None:
                    cands.append(self._listed(i, d, r, rule, a))
            if d.kind == Kind.SETTLE:
                if m not in known and len(known) < KNOWN_MERCHANTS_MAX:
                    known[m] = None
            elif m not in known and not card_known(m):
                if reports is None:
                    reports = first_reports(batch)
                # named by a facilitator earlier in the stream than this transfer (its input index): known
                if reports.get(m, len(batch)) >= (positions[i] if i < len(positions) else len(batch)):
                    cands.append(Candidate(i, d.ts_ms, r, "unknown_payee", "policy", a, 0, USDC, "payment",
                                           [d.event_id], f"on-chain transfer of {fmt_usdc(a)} USDC to {m}, an "
                                           "address no facilitator has reported and no rate card lists", m, None,
                                           f"{d.event_id}|{m}"))
            rate = lookup(m, d.resource)
            if rate is not None and rate.price is not None and not rate.low <= a <= rate.high:
                cands.append(self._drift(i, d, r, rate, a))
        self._models(deltas, ni, rows, ts, amt, merchants, cands)

    def _settled_after_transfer(self, deltas, moves, rows, live, cands) -> None:
        """The settle's facts judged where the transfer's (its `to`, no resource, its category: `Delta.move`)
        judged otherwise in `_new_payments`, so a payment is judged once whichever record came first."""
        t, lookup = self.table, self.ratecard.lookup
        for i in moves:
            d, r = deltas[i], int(rows[i])
            mv = d.move
            if not live[i] or mv.count <= 0:   # frozen, or the chain reverted it: nothing counted to judge
                continue
            m, a = d.merchant, mv.amount
            if t.has_lists[r]:
                lim = t.limits[r]
                rule = merchant_verdict(lim, m, d.resource, d.category)
                if rule is not None and rule != merchant_verdict(lim, mv.merchant, None, mv.category, settled=False):
                    cands.append(self._listed(i, d, r, rule, a))
            rate = lookup(m, d.resource)
            if (rate is not None and rate.price is not None and not rate.low <= a <= rate.high
                    and rate is not lookup(mv.merchant, None)):
                cands.append(self._drift(i, d, r, rate, a))

    @staticmethod
    def _listed(i: int, d, r: int, rule: str, a: int) -> Candidate:
        m = d.merchant
        return Candidate(i, d.ts_ms, r, rule, "policy", a, 0, USDC, "payment", [d.event_id],
                         f"paid {m} ({d.resource or 'no resource'}, category {d.category or 'none'}): "
                         f"{rule.replace('_', ' ')}", m, d.category)

    @staticmethod
    def _drift(i: int, d, r: int, rate, a: int) -> Candidate:
        m = d.merchant
        return Candidate(i, d.ts_ms, r, "price_drift", "policy", a, rate.price, USDC, "payment", [d.event_id],
                         f"charged {fmt_usdc(a)} USDC, card {rate.version} says {fmt_usdc(rate.price)} (allowed "
                         f"{fmt_usdc(rate.low)}..{fmt_usdc(rate.high)})", m, rate.category,
                         f"{d.event_id}|{m}|{rate.version}")

    def _models(self, deltas, ni, rows, ts, amt, merchants, cands) -> None:
        t = self.table
        r, tt, a = rows[ni], ts[ni], amt[ni]
        have_m = any(merchants)
        mh = merchant_hash(merchants) if have_m else np.ones(len(ni), np.uint64)
        sc = self.base.observe(r, tt, a, mh, t.params, lambda j: deltas[ni[j]].event_id)
        p = t.params
        sink = self.score_sink
        if sink is not None and sc.warm.any():
            # a baseline judges only once warm: a fresh agent's z-scores are noise, not scores
            sink("agent.rate_z", np.maximum(sc.z_rate[sc.warm], 0.0), int(sc.rate_flag.sum()))
            sink("agent.size_z", np.maximum(sc.z_size[sc.warm], 0.0), int(sc.size_flag.sum()))
        flagged = np.nonzero(sc.rate_flag | sc.size_flag | (sc.warm & (sc.newm_count >= 2)))[0]
        for j in flagged.tolist():
            i = int(ni[j])
            d = deltas[i]
            row = int(r[j])
            m = merchants[j] or None
            if sc.rate_flag[j]:
                cands.append(Candidate(i, d.ts_ms, row, "baseline.spend_rate", "model", round(float(sc.ratio[j]), 3),
                                       float(p.ratio[row]), "ratio", "30m", [d.event_id],
                                       f"spending {sc.ratio[j]:.1f}x its own 6h baseline (z {sc.z_rate[j]:.1f}, "
                                       f"{fmt_usdc(int(sc.spend_m[j]))} USDC in ~30 min)", m, d.category))
            if sc.size_flag[j]:
                cands.append(Candidate(i, d.ts_ms, row, "baseline.payment_size", "model",
                                       round(float(sc.z_size[j]), 3), float(p.size_z[row]), "z", "payment",
                                       [d.event_id], f"payment of {fmt_usdc(int(a[j]))} USDC is {sc.z_size[j]:.1f} "
                                       "sd above its usual size", m, d.category))
            if have_m and sc.warm[j] and sc.newm_count[j] >= t.limits[row].anomaly.new_merchants:
                win = t.limits[row].anomaly.new_merchants_window_seconds
                cands.append(Candidate(i, d.ts_ms, row, "new_merchant_burst", "model", int(sc.newm_count[j]),
                                       t.limits[row].anomaly.new_merchants, "count", f"{win}s",
                                       sc.newm_ids.get(j) or [d.event_id],
                                       f"{int(sc.newm_count[j])} first-time merchants within {win} s", m,
                                       d.category, f"{d.event_id}|burst"))
        if not self.policy.defaults.anomaly.fleet:
            return
        warm_rows = r[sc.warm]
        if not len(warm_rows):
            return
        now = int(tt.max())
        due = self.fleet.due(warm_rows, now)
        if not len(due):
            return
        feats, z_rate, spent = self.base.features(due, now)
        scores, flags = self.fleet.score(due, feats, now)
        if sink is not None:
            sink("fleet.hst", scores, int(flags.sum()))
        if not flags.any():
            return
        last_pos = {int(row): int(ni[j]) for j, row in enumerate(r.tolist())}
        thr = self.fleet.threshold()
        for k in np.nonzero(flags)[0].tolist():
            row = int(due[k])
            # corroborated by the agent's own spend rate, and worth a person's time (the spend-rate rule's floor)
            if z_rate[k] < t.limits[row].anomaly.fleet_corroborate_z or spent[k] < p.min_spend[row]:
                continue
            i = last_pos[row]
            d = deltas[i]
            cands.append(Candidate(i, d.ts_ms, row, "fleet.hst", "model", round(float(scores[k]), 4),
                                   round(thr, 4), "score", "fleet", [d.event_id],
                                   f"fleet model score {scores[k]:.3f} above its {self.fleet.quantile} quantile "
                                   f"{thr:.3f}, spend-rate z {z_rate[k]:.1f}, "
                                   f"{fmt_usdc(int(spent[k]))} USDC in ~30 min",
                                   None, d.category, f"{d.event_id}|fleet"))

    def _signals(self, signals: list[Observation], base_pos: int, cands) -> None:
        for k, o in enumerate(signals):
            if o.reason is None or o.status not in ("invalid", "failed"):
                continue
            if o.reason not in self.policy.limits(o.agent).findings.failed_reasons:
                continue  # before a row is made: a bad signature's `from` is anyone's choice
            r = self.row(o.agent)  # recorded even while frozen, so the ring does not depend on batching
            p = int(self.fail_ptr[r])
            self.fail_ring[r, p % FAIL_SLOTS] = o.ts_ms
            self.fail_ptr[r] = p + 1
            self.fail_ids.put(r, p, o.event_id)
            window = int(self.table.fail_window_ms[r])
            count = int((self.fail_ring[r] > o.ts_ms - window).sum())
            need = int(self.table.fail_n[r])
            if count >= need:
                ids = self.fail_ids.counted(r, self.fail_ring[r].tolist(), p + 1, o.ts_ms - window)
                cands.append(Candidate(base_pos + k, o.ts_ms, r, "failed_verifications", "policy", count, need,
                                       "count", f"{window // 1000}s", ids,
                                       f"{count} payments refused ({o.reason}) within {window // 1000} s",
                                       o.merchant, None))

    def _findings(self, findings, base_pos: int, cands) -> None:
        for k, f in enumerate(findings):
            r = self.row(f.agent)
            ms = int(f.observedAt.timestamp() * 1000)
            settled = int(f.settledAmount) if f.settledAmount is not None else None
            moved = int(f.transferredAmount) if f.transferredAmount is not None else None
            observed = moved if moved is not None else (settled or 0)
            threshold = settled if f.kind == "amount_mismatch" and settled is not None else 0
            cands.append(Candidate(base_pos + k, ms, r, f"finding.{f.kind}", "finding", observed, threshold, USDC,
                                   None, list(f.eventIds)[:FINDING_IDS], f"{f.kind.replace('_', ' ')} on {f.tx}: {f.detail}",
                                   f.merchant, None, f.id))
