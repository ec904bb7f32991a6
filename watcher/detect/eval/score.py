"""Replay a seeded world through the detector and score its decisions against the ground truth.

Per incident scenario:
  recall                  share of incidents with a warn/escalate/freeze at or after onset (for
                          price_drift: a price_drift decision naming the drifting merchant)
  detection_delay_s       median seconds from onset to the first such decision (p90 alongside)
  usdc_spent_after_onset  largest USDC the agent spent from onset up to and including the triggering
                          payment of that decision (mean alongside)
  false_*                 decisions about the scenario's agents before their onset
For runaway_loop also the spend up to the freeze, against the target: per-minute cap + one payment.
On the normal fleet: freezes (false_freezes) and warnings+escalations per 1,000 agent-hours.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import numpy as np

from watcher.detect.decision import Decision
from watcher.detect.eval.scenarios import CAP_1M_USDC, World, build_world, rate_cards
from watcher.detect.policy import Policy
from watcher.detect.replay import Replay

SCENARIOS = ("normal_fleet", "runaway_loop", "slow_drain", "compromised_key", "price_drift", "category_budget",
             "new_merchant_burst")
TARGETS = {"runaway_loop": 0.95, "slow_drain": 0.95, "compromised_key": 0.95, "price_drift": 0.95}


def _spent(payments, onset_ms: int, d: Decision) -> int:
    ids = set(d.event_ids[-1:])     # the triggering event is the last named (a count rule names all it counted)
    at = d.at_ms
    total = 0
    for ts, amt, sid, tid in payments:
        if ts < onset_ms:
            continue
        if sid in ids or tid in ids:
            return total + amt
        if ts > at:
            break
        total += amt
    return total


def score(world: World, decisions: list[Decision]) -> dict:
    by_agent: dict[str, list[Decision]] = defaultdict(list)
    drift_by_merchant: dict[str, list[Decision]] = defaultdict(list)
    for d in decisions:
        by_agent[d.agent].append(d)
        if d.rule == "price_drift" and d.merchant:
            drift_by_merchant[d.merchant].append(d)
    rows = []
    agent_hours = len(world.normal_agents) * world.hours
    normal = [d for a in world.normal_agents for d in by_agent.get(a, [])]
    nf = sum(d.kind == "freeze" for d in normal)
    nw = sum(d.kind in ("warn", "escalate") for d in normal)
    rows.append({"name": "normal_fleet", "recall": None, "detection_delay_s": None, "usdc_spent_after_onset": None,
                 "false_freezes": nf, "false_warnings_per_1000_agent_hours": round(nw * 1000 / agent_hours, 3),
                 "agents": len(world.normal_agents), "agent_hours": agent_hours,
                 "false_rules": dict(Counter(d.rule for d in normal))})
    groups: dict[str, list] = defaultdict(list)
    for inc in world.incidents:
        groups[inc.scenario].append(inc)
    for name in SCENARIOS[1:]:
        incs = groups.get(name, [])
        delays, spent, freeze_spent, rules, false_f, false_w, pre_hours = [], [], [], Counter(), 0, 0, 0.0
        seen_merchants: set[str] = set()
        for inc in incs:
            ds = sorted(by_agent.get(inc.agent, []), key=lambda d: d.at_ms)
            pre = [d for d in ds if d.at_ms < inc.onset_ms and not (name == "price_drift" and d.rule == "price_drift")]
            false_f += sum(d.kind == "freeze" for d in pre)
            false_w += sum(d.kind in ("warn", "escalate") for d in pre)
            pre_hours += (inc.onset_ms - world_start(world)) / 3_600_000
            if name == "price_drift":
                if inc.merchant in seen_merchants:
                    continue
                seen_merchants.add(inc.merchant)
                hits = [d for d in drift_by_merchant.get(inc.merchant, []) if d.at_ms >= inc.onset_ms]
            else:
                hits = [d for d in ds if d.at_ms >= inc.onset_ms and d.kind != "observe"]
            if not hits:
                delays.append(None)
                continue
            first = min(hits, key=lambda d: d.at_ms)
            rules[first.rule] += 1
            delays.append((first.at_ms - inc.onset_ms) / 1000)
            spent.append(_spent(world.payments.get(first.agent, []), inc.onset_ms, first))
            fr = [d for d in hits if d.kind == "freeze"]
            if name == "runaway_loop":
                freeze_spent.append(_spent(world.payments[inc.agent], inc.onset_ms, fr[0]) if fr else None)
        found = [x for x in delays if x is not None]
        row = {"name": name, "recall": round(len(found) / len(delays), 4) if delays else None,
               "detection_delay_s": round(float(np.median(found)), 1) if found else None,
               "usdc_spent_after_onset": round(max(spent) / 1e6, 6) if spent else None,
               "false_freezes": false_f,
               "false_warnings_per_1000_agent_hours": round(false_w * 1000 / pre_hours, 3) if pre_hours else None,
               "incidents": len(delays), "detection_delay_p90_s": round(float(np.percentile(found, 90)), 1)
               if found else None, "usdc_spent_mean": round(float(np.mean(spent)) / 1e6, 6) if spent else None,
               "first_rules": dict(rules)}
        if name == "runaway_loop":
            target = max(((CAP_1M_USDC * 1e6 + inc.payment) for inc in incs), default=0)
            frozen = [x for x in freeze_spent if x is not None]
            row["frozen"] = len(frozen)
            row["usdc_spent_before_freeze_max"] = round(max(frozen) / 1e6, 6) if frozen else None
            row["usdc_spent_before_freeze_ok"] = bool(frozen) and len(frozen) == len(freeze_spent) and all(
                x <= CAP_1M_USDC * 1e6 + inc.payment for x, inc in zip(freeze_spent, incs))
            row["target_usdc_max"] = round(target / 1e6, 6)
        rows.append(row)
    return {"scenarios": rows}


def world_start(world: World) -> int:
    from watcher.detect.eval.scenarios import T0_MS

    return T0_MS


def run_eval(seed: int = 1, policy_text: str | None = None, **world_kw) -> dict:
    """Build the world for `seed`, replay it, score it. `policy_text` replaces the built-in limits."""
    t0 = time.perf_counter()
    world = build_world(seed, **world_kw)
    t1 = time.perf_counter()
    text = world.policy_text if policy_text is None else policy_text + rate_cards(world.merchants)
    policy = Policy.from_text(text, "<eval>")
    rp = Replay(policy)
    decisions = list(rp.run(world.records, drain_ms=1_800_000))
    t2 = time.perf_counter()
    out = score(world, decisions)
    out.update({"seed": seed, "events": rp.stats.events, "decisions": rp.stats.decisions,
                "targets_met": targets_met(out),
                "seconds": {"generate": round(t1 - t0, 2), "replay": round(t2 - t1, 2)}})
    return out


def run_evals(seeds: list[int], policy_text: str | None = None, **world_kw) -> dict:
    """`run_eval` for each seed, and per target the seeds that missed it (a target met in one seed only
    is luck, not a property of the detector)."""
    runs = [run_eval(seed, policy_text, **world_kw) for seed in seeds]
    missed = {k: [r["seed"] for r in runs if not r["targets_met"][k]] for k in runs[0]["targets_met"]}
    worst = {}
    for name in SCENARIOS:
        rows = [next(x for x in r["scenarios"] if x["name"] == name) for r in runs]
        worst[name] = {
            "recall_min": min((x["recall"] for x in rows if x["recall"] is not None), default=None),
            "detection_delay_s_max": max((x["detection_delay_s"] for x in rows
                                          if x["detection_delay_s"] is not None), default=None),
            "false_freezes_max": max(x["false_freezes"] for x in rows),
            "false_warnings_per_1000_agent_hours_max": max(x["false_warnings_per_1000_agent_hours"]
                                                           for x in rows)}
    return {"seeds": seeds, "runs": runs, "worst": worst, "missed": missed,
            "all_targets_met": not any(missed.values())}


def targets_met(result: dict) -> dict:
    rows = {r["name"]: r for r in result["scenarios"]}
    met = {f"recall_{k}": (rows[k]["recall"] or 0) >= v for k, v in TARGETS.items()}
    met["runaway_spend_within_cap_plus_one_payment"] = bool(rows["runaway_loop"].get("usdc_spent_before_freeze_ok"))
    met["normal_fleet_no_false_freezes"] = rows["normal_fleet"]["false_freezes"] == 0
    met["normal_fleet_false_warnings_le_1_per_1000h"] = rows["normal_fleet"]["false_warnings_per_1000_agent_hours"] <= 1
    return met
