"""Rolling windows against a brute-force reference (hypothesis), including out-of-order and late events."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.pipeline.windows import Windows, WindowSpec

SPECS = (WindowSpec("10s", 10, 5), WindowSpec("60s", 60, 6), WindowSpec("5m", 300, 5))
T0 = 1_800_000_000_000

events = st.lists(st.tuples(st.integers(0, 7),                      # key
                            st.integers(0, 900_000),                # ms after T0 (15 min span)
                            st.integers(-10**12, 10**15)),          # amount (negative = un-count)
                  min_size=1, max_size=300)


def brute(evs, key, spec, now_ms):
    g = spec.granularity_ms
    qb = now_ms // g
    s = c = 0
    for k, t, a, d in evs:
        if k == key and qb - spec.buckets < t // g <= qb:
            s += a
            c += d
    return s, c


@settings(max_examples=300, deadline=None)
@given(events, st.lists(st.integers(1, 60), min_size=1, max_size=6), st.integers(0, 400_000))
def test_window_sums_equal_brute_force(evs, batch_sizes, query_after):
    w = Windows(SPECS, capacity=2)
    keys = [w.row(bytes([k])) for k in range(8)]
    full = [(k, T0 + t, a, 1 if a >= 0 else -1) for k, t, a in evs]
    i, b = 0, 0
    while i < len(full):
        chunk = full[i: i + batch_sizes[b % len(batch_sizes)]]
        i += len(chunk)
        b += 1
        w.add(np.array([keys[k] for k, *_ in chunk]), np.array([t for _, t, _, _ in chunk]),
              np.array([a for *_, a, _ in chunk]), np.array([d for *_, d in chunk]))
    now = w.watermark_ms + query_after
    sums, counts = w.totals(now_ms=now)
    for k in range(8):
        for j, spec in enumerate(SPECS):
            assert (int(sums[keys[k], j]), int(counts[keys[k], j])) == brute(full, k, spec, now), (k, spec)
            assert sums.dtype == np.int64 and counts.dtype.kind == "i"


@settings(max_examples=50, deadline=None)
@given(events)
def test_order_does_not_matter_when_queried_at_watermark(evs):
    """Any arrival order gives the same sums at the same query time (late-but-in-window events count)."""
    full = [(k, T0 + t, abs(a)) for k, t, a in evs]
    results = []
    for order in (full, list(reversed(full)), sorted(full, key=lambda e: e[1])):
        w = Windows(SPECS)
        rows = np.array([w.row(bytes([k])) for k, _, _ in order])
        for i in range(len(order)):  # one event per batch: the worst case for late handling
            w.add(rows[i:i + 1], np.array([order[i][1]]), np.array([order[i][2]]), np.array([1]))
        now = max(t for _, t, _ in full)
        results.append({w.keys[r]: tuple(map(int, w.totals(np.array([r]), now)[0][0])) for r in range(len(w))})
    assert results[0] == results[1] == results[2]


def test_late_event_beyond_every_window_is_counted_as_dropped():
    w = Windows(SPECS)
    r = w.row(b"a")
    w.add(np.array([r]), np.array([T0 + 1_000_000]), np.array([5]), np.array([1]))
    w.add(np.array([r]), np.array([T0]), np.array([7]), np.array([1]))
    assert w.late_dropped == 1
    assert w.total(b"a")[0] == [5, 5, 5]


def test_idle_windows_drain_as_time_passes():
    w = Windows(SPECS)
    r = w.row(b"a")
    w.add(np.array([r]), np.array([T0]), np.array([100]), np.array([1]))
    assert w.total(b"a", T0 + 5_000)[0] == [100, 100, 100]
    assert w.total(b"a", T0 + 11_000)[0] == [0, 100, 100]
    assert w.total(b"a", T0 + 301_000)[0] == [0, 0, 0]


def test_snapshot_round_trip_and_compact():
    w = Windows(SPECS)
    rows = np.array([w.row(bytes([i])) for i in range(100)])
    w.add(rows, np.full(100, T0), np.arange(100), np.ones(100))
    w2 = Windows.restore(w.snapshot())
    assert np.array_equal(w.totals()[0], w2.totals()[0])
    w2.advance(T0 + 400_000)
    assert w2.compact() == 100 and len(w2) == 0


def test_money_stays_integer_at_large_values():
    w = Windows(SPECS)
    r = w.row(b"a")
    big = 2**62 // 4
    w.add(np.array([r, r, r]), np.array([T0, T0 + 1, T0 + 2]), np.array([big, big, 1]), np.array([1, 1, 1]))
    assert w.total(b"a")[0][0] == 2 * big + 1


# -- overflow: a sum beyond int64 is held at the limit (above every cap), counted, never wrapped ------------
I64 = 2**63 - 1
NEAR = 2**62 - 1  # the largest amount the decoder has accepted: three of them overflow int64


def test_bucket_sum_that_would_overflow_is_held_at_int64_max_and_counted():
    w = Windows(SPECS)
    r = w.row(b"a")
    w.add(np.array([r, r, r]), np.array([T0, T0 + 1, T0 + 2]), np.full(3, NEAR), np.ones(3))
    assert w.total(b"a") == ([I64] * 3, [3] * 3)  # wrapped, the sum would be negative: under every cap
    assert w.saturated == 3  # one bucket in each of the three windows
    w.add(np.array([r]), np.array([T0 + 3]), np.array([NEAR]), np.array([1]))  # one at a time, too
    assert w.total(b"a") == ([I64] * 3, [4] * 3) and w.saturated == 6


def test_near_the_limit_sums_stay_exact_until_they_would_overflow():
    w = Windows(SPECS)
    r = w.row(b"a")
    w.add(np.array([r, r]), np.array([T0, T0 + 1]), np.array([NEAR, NEAR]), np.ones(2))
    w.add(np.array([r, r]), np.array([T0 + 2, T0 + 3]), np.array([1, -5]), np.array([1, -1]))  # 2^63 - 6
    assert w.total(b"a")[0] == [I64 - 5] * 3 and w.saturated == 0
    w.add(np.array([r, r]), np.array([T0 + 4, T0 + 4]), np.array([10, -5]), np.array([1, 1]))  # 2^63 - 1
    assert w.total(b"a")[0] == [I64] * 3 and w.saturated == 0


def test_negative_overflow_is_held_at_int64_min():
    w = Windows(SPECS)
    r = w.row(b"a")
    w.add(np.array([r, r, r]), np.full(3, T0), np.full(3, -NEAR - 1), np.full(3, -1))
    assert w.total(b"a")[0] == [-I64 - 1] * 3 and w.saturated == 3


def test_window_total_over_buckets_that_would_overflow_is_held():
    w = Windows(SPECS)
    r = w.row(b"a")
    for i in range(3):  # three different buckets of every window: no single bucket overflows
        w.add(np.array([r]), np.array([T0 + i * 61_000]), np.array([NEAR]), np.array([1]))
    assert w.saturated == 0
    assert w.total(b"a")[0] == [NEAR, NEAR, I64]  # 10s, 60s: the last bucket only; 5m: held
    assert w.total(b"b")[0] == [0, 0, 0] and w.totals()[0].dtype == np.int64


def test_a_query_before_the_watermark_is_held_too():
    w = Windows([WindowSpec("5m", 300, 5)])
    r = w.row(b"a")
    for i in range(3):
        w.add(np.array([r]), np.array([T0 + i * 60_000]), np.array([NEAR]), np.array([1]))
    w.add(np.array([r]), np.array([T0 + 480_000]), np.array([1]), np.array([1]))  # the old buckets leave
    assert w.total(b"a")[0] == [1] and w._bound == 1
    assert w.total(b"a", T0 + 120_000)[0] == [I64]  # the three old buckets, still in their columns


def test_other_keys_stay_exact_beside_a_saturated_one():
    w = Windows(SPECS)
    a, b = w.row(b"a"), w.row(b"b")
    w.add(np.array([a, a, a, b, b]), np.full(5, T0), np.array([NEAR, NEAR, NEAR, 7, NEAR]), np.ones(5))
    assert w.total(b"a")[0] == [I64] * 3 and w.total(b"b")[0] == [NEAR + 7] * 3 and w.saturated == 3


def test_the_bound_comes_down_once_saturated_buckets_leave_their_windows():
    w = Windows(SPECS)
    r = w.row(b"a")
    w.add(np.array([r, r, r]), np.full(3, T0), np.full(3, NEAR), np.ones(3))
    w.add(np.array([r]), np.array([T0 + 400_000]), np.array([5]), np.array([1]))  # every old bucket reused
    assert w.total(b"a")[0] == [5, 5, 5] and w._bound < 2**40  # back on the fast path


def test_saturation_survives_a_checkpoint():
    w = Windows(SPECS)
    r = w.row(b"a")
    w.add(np.array([r, r, r]), np.full(3, T0), np.full(3, NEAR), np.ones(3))
    w2 = Windows.restore(w.snapshot())
    assert w2.saturated == 3 and w2.total(b"a")[0] == [I64] * 3
    w2.add(np.array([r]), np.array([T0]), np.array([NEAR]), np.array([1]))
    assert w2.total(b"a")[0] == [I64] * 3 and w2.saturated == 6


big_events = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 400_000),
                                st.one_of(st.integers(0, 10**12), st.integers(2**60, NEAR))),
                      min_size=1, max_size=40)


@settings(max_examples=100, deadline=None)
@given(big_events, st.integers(1, 8))
def test_non_negative_sums_equal_brute_force_capped_at_int64_max(evs, batch):
    """With non-negative amounts, every total is exactly min(true sum, int64 max): never wrapped."""
    w = Windows(SPECS, capacity=2)
    keys = [w.row(bytes([k])) for k in range(3)]
    full = [(k, T0 + t, a, 1) for k, t, a in evs]
    for i in range(0, len(full), batch):
        chunk = full[i: i + batch]
        w.add(np.array([keys[k] for k, *_ in chunk]), np.array([t for _, t, _, _ in chunk]),
              np.array([a for *_, a, _ in chunk]), np.array([d for *_, d in chunk]))
    sums, counts = w.totals()
    for k in range(3):
        for j, spec in enumerate(SPECS):
            s, c = brute(full, k, spec, w.watermark_ms)
            assert (int(sums[keys[k], j]), int(counts[keys[k], j])) == (min(s, I64), c), (k, spec)
