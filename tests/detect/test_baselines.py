"""Baselines against a brute-force, one-payment-at-a-time EW reference, for any batching."""

import math

import numpy as np
from hypothesis import given, settings, strategies as st

import watcher.detect.baselines as B


def reference(payments, tau_m=B.TAU_M_S, tau_l=B.TAU_L_S):
    """Sequential reference with training always on (anomaly scoring disabled)."""
    state = {}
    for row, t, amt in payments:
        s = state.setdefault(row, {"n": 0})
        x = math.log(max(amt, 1))
        if s["n"] == 0:
            s.update(first=t, last=t, sm=amt, sl=amt, size=(x, 0.0), gap=None, lr=None)
            s["n"] = 1
            continue
        dt = max(t - s["last"], 0) / 1000
        age = max((t - s["first"]) / 1000, 1.0)
        sm = s["sm"] * math.exp(-dt / tau_m) + amt
        sl_prev = s["sl"] * math.exp(-dt / tau_l)
        rate_m = sm / (tau_m * -math.expm1(-age / tau_m))
        rate_l = sl_prev / (tau_l * -math.expm1(-age / tau_l))
        lr = math.log(max(rate_m / max(rate_l, 1.0 / tau_l), B.RATIO_FLOOR))
        g = math.log(max(dt, B.MIN_GAP_S))

        def ew(prev, v, a):
            if prev is None:
                return (v, 0.0)
            m, var = prev
            d = v - m
            return (m + a * d, (1 - a) * (var + a * d * d))
        s["size"] = ew(s["size"], x, B.ALPHA)
        s["gap"] = ew(s["gap"], g, B.ALPHA)
        s["lr"] = ew(s["lr"], lr, -math.expm1(-dt / B.TAU_LR_S))
        s.update(sm=sm, sl=sl_prev + amt, last=max(s["last"], t), n=s["n"] + 1)
    return state


def _params(n):
    p = B.RowParams(n)
    p.enabled[:] = False
    p.newm_window_ms[:] = 600_000
    return p


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 120_000), st.integers(0, 5_000_000)),
                min_size=1, max_size=120),
       st.lists(st.integers(1, 30), min_size=1, max_size=10))
def test_matches_reference_for_any_batching(raw, cuts):
    t, payments = 1_795_000_000_000, []
    for row, dt, amt in raw:
        t += dt
        payments.append((row, t, amt))
    b = B.Baselines(8)
    p = _params(8)
    i = k = 0
    while i < len(payments):
        part = payments[i: i + cuts[k % len(cuts)]]
        i += len(part)
        k += 1
        rows = np.array([x[0] for x in part])
        b.observe(rows, np.array([x[1] for x in part]), np.array([x[2] for x in part]),
                  np.ones(len(part), np.uint64), p)
    ref = reference(payments)
    for row, s in ref.items():
        S = b.state[row]
        assert S[B.N] == s["n"]
        assert math.isclose(S[B.SM], s["sm"], rel_tol=1e-9) and math.isclose(S[B.SL], s["sl"], rel_tol=1e-9)
        assert np.allclose([S[B.SIZE_M], S[B.SIZE_V]], s["size"], rtol=1e-9, atol=1e-12)
        if s["gap"] is not None:
            assert np.allclose([S[B.GAP_M], S[B.GAP_V]], s["gap"], rtol=1e-9, atol=1e-12)
            assert np.allclose([S[B.LR_M], S[B.LR_V]], s["lr"], rtol=1e-9, atol=1e-12)


def test_vector_and_scalar_paths_agree():
    results = []
    for vmin, vrounds in ((10**9, 0), (0, 10**9)):
        old = B.VECTOR_MIN, B.VECTOR_ROUNDS
        B.VECTOR_MIN, B.VECTOR_ROUNDS = vmin, vrounds
        try:
            r = np.random.default_rng(1)
            b, p = B.Baselines(64), _params(64)
            p.enabled[:] = True
            p.warm_n[:], p.warm_ms[:], p.ratio[:], p.z_rate[:] = 5, 60_000, 3, 1
            p.min_spend[:], p.size_z[:], p.min_payment[:] = 1e3, 2, 1e3
            p.newm_n[:] = 3
            t, outs, ids = 1_795_000_000_000, [], []
            for k in range(150):
                n = int(r.integers(1, 40))
                t += int(r.integers(1000, 60_000))
                sc = b.observe(r.integers(0, 10, n), t + np.sort(r.integers(0, 5000, n)),
                               r.integers(100, 100_000, n), r.integers(1, 20, n).astype(np.uint64), p,
                               lambda j, k=k: f"{k}.{j}")
                outs.append(np.c_[sc.ratio, sc.z_rate, sc.z_size, sc.z_gap, sc.new, sc.newm_count, sc.rate_flag,
                                  sc.size_flag])
                ids.append(sorted(sc.newm_ids.items()))
                assert all(len(v) == sc.newm_count[j] and v[-1] == f"{k}.{j}" for j, v in sc.newm_ids.items())
            results.append((b.state.copy(), b.mtab.copy(), np.concatenate(outs), ids, b.newm_ids.rows))
        finally:
            B.VECTOR_MIN, B.VECTOR_ROUNDS = old
    (s1, m1, o1, i1, r1), (s2, m2, o2, i2, r2) = results
    assert np.array_equal(m1, m2)
    assert i1 == i2 and r1 == r2 and sum(map(len, i1)) > 10   # the burst evidence too, from either path
    assert np.allclose(s1, s2, rtol=1e-12) and np.allclose(o1, o2, rtol=1e-12)
    assert o1[:, 6].any()                   # some payments were flagged, so gating was exercised


def test_flagged_payment_does_not_train():
    b, p = B.Baselines(4), _params(4)
    p.enabled[:] = True
    p.warm_n[:], p.warm_ms[:], p.size_z[:], p.min_payment[:] = 3, 0, 4, 1
    p.ratio[:], p.z_rate[:] = 1e9, 1e9
    t = 1_795_000_000_000
    for k in range(10):
        b.observe(np.array([0]), np.array([t + k * 60_000]), np.array([1000]), np.array([1], np.uint64), p)
    before = b.state[0].copy()
    sc = b.observe(np.array([0]), np.array([t + 11 * 60_000]), np.array([10**9]), np.array([1], np.uint64), p)
    assert sc.size_flag[0]
    assert b.state[0][B.SIZE_M] == before[B.SIZE_M] and b.state[0][B.SIZE_V] == before[B.SIZE_V]


def test_fleet_model_does_not_learn_what_it_flags():
    """The fleet half of "anomalous points do not train the models" (the baselines' half is above)."""
    import pickle

    from watcher.detect.fleet import FleetModel

    rng = np.random.default_rng(1)
    m = FleetModel(0.95, interval_ms=0)
    m.grow(1)
    rows = np.arange(1)
    for i in range(2000):
        m.score(rows, np.clip(0.5 + rng.normal(0, 0.02, (1, 5)), 0, 1), i)
    trees = pickle.dumps(m.filter.anomaly_detector)
    _, flags = m.score(rows, np.array([[1.0, 0.0, 1.0, 0.0, 1.0]]), 10**6)
    assert flags[0] and pickle.dumps(m.filter.anomaly_detector) == trees
    _, flags = m.score(rows, np.full((1, 5), 0.5), 10**6 + 1)
    assert not flags[0] and pickle.dumps(m.filter.anomaly_detector) != trees     # a normal point does train


def test_the_fleet_model_scores_the_longest_overdue_first():
    """With more agents due than max_per_batch in every batch, the first rows in row order were taken each
    time: agents in higher rows were never scored by the fleet model at all."""
    from watcher.detect.fleet import FleetModel

    m = FleetModel(0.95, interval_ms=1_000, max_per_batch=4)
    m.grow(12)
    rows = np.arange(12)
    scored = set()
    for t in range(0, 6_000, 500):          # a batch of every agent twice a second; 4 scored per batch
        due = m.due(rows, t)
        assert len(due) <= 4 and list(due) == sorted(due)
        m.score(due, np.full((len(due), 5), 0.5), t)
        scored |= set(due.tolist())
    assert scored == set(range(12))
