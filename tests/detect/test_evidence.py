"""A count rule's decision names every event it counted, across checkpoints, within its bound."""

import msgspec

from tests.detect.conftest import AGENT, T0, Harness
from watcher.detect import Detector
from watcher.detect.baselines import NEWM_SLOTS
from watcher.detect.candidates import FAIL_SLOTS
from watcher.detect.evidence import IdRings
from watcher.events.addresses import eip55
from watcher.pipeline.shard import Shard

FAILS = "[defaults.findings]\nfailed_verifications = 20\nfailed_verifications_window_seconds = 60\n"
NOVELTY = "[defaults.anomaly]\nwarmup_payments = 5\nwarmup_seconds = 60\nnew_merchants = {n}\nfleet = false\n"
# the checkpoint keys of the code before the ids were kept
OLD_DETECTOR_KEYS = {"v", "agents", "now_ms", "policy_version", "base", "fleet", "frozen", "fail_ring", "fail_ptr",
                     "cooldown", "pending", "approved", "known", "counts"}
OLD_BASELINE_KEYS = {"cols", "state", "mtab", "newm", "size"}


def _merchant(i: int) -> str:
    return "0x" + f"{0x40 + i:02x}" * 20


def _restart(h: Harness, old_shape: bool = False) -> None:
    """What a handoff does: the detector and shard snapshots through msgpack, restored into new objects."""
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(h.detector.snapshot()))
    if old_shape:
        del snap["fail_ids"], snap["base"]["newm_ids"]
        assert set(snap) == OLD_DETECTOR_KEYS and set(snap["base"]) == OLD_BASELINE_KEYS
    shard_snap = msgspec.msgpack.decode(msgspec.msgpack.encode(h.shard.snapshot()))
    h.detector = Detector.restore(snap, h.policy)
    h.shard = Shard.restore(shard_snap, h.shard.config, h.detector.categorize)


def _warm(h: Harness, agent: str = AGENT) -> None:
    h.feed([h.settle(T0 + i * 20_000, 1000, agent=agent) for i in range(10)])


def test_failed_verifications_name_every_refusal_counted():
    h = Harness(FAILS)
    recs = [h.failed_verify(T0 + i * 100) for i in range(20)]
    ds = h.feed(recs)
    assert [(d.rule, d.observed) for d in ds] == [("failed_verifications", 20)]
    assert ds[0].event_ids == [f"v{i}" for i in range(1, 21)]        # time order, the crossing one last


def test_failed_verifications_outside_the_window_are_not_named():
    h = Harness(FAILS)
    h.feed([h.failed_verify(T0 + i * 100) for i in range(5)])        # v1..v5, 70 s before the burst
    ds = h.feed([h.failed_verify(T0 + 70_000 + i * 100) for i in range(20)])
    assert ds[0].event_ids == [f"v{i}" for i in range(6, 26)]


def test_failed_verifications_across_a_restore_mid_burst():
    h = Harness(FAILS)
    assert h.feed([h.failed_verify(T0 + i * 100) for i in range(12)]) == []
    _restart(h)
    ds = h.feed([h.failed_verify(T0 + 1200 + i * 100) for i in range(8)])
    assert [(d.rule, d.observed) for d in ds] == [("failed_verifications", 20)]
    assert ds[0].event_ids == [f"v{i}" for i in range(1, 21)]


def test_failed_verifications_ids_are_bounded_by_the_ring():
    h = Harness("[defaults]\nwarn_cooldown_seconds = 0\n[defaults.findings]\nfailed_verifications = 64\n"
                "failed_verifications_window_seconds = 600\n")
    ds = h.feed([h.failed_verify(T0 + i * 100) for i in range(FAIL_SLOTS + 6)])
    assert [d.observed for d in ds] == [FAIL_SLOTS] * 7                # the 64th and each one after it
    assert ds[0].event_ids == [f"v{i}" for i in range(1, 65)]
    assert ds[-1].event_ids == [f"v{i}" for i in range(7, 71)]         # the newest 64 of the 70
    assert all(len(d.event_ids) == FAIL_SLOTS for d in ds)


def test_new_merchant_burst_names_the_payments_to_first_time_merchants():
    h = Harness(NOVELTY.format(n=4))
    _warm(h)                                                          # e1..e10, one merchant
    ds = h.feed([h.settle(T0 + 900_000 + i * 1000, 1000, merchant=_merchant(i)) for i in range(5)])
    assert [(d.rule, d.observed, d.event_ids) for d in ds] == [("new_merchant_burst", 4, ["e11", "e12", "e13", "e14"])]


def test_new_merchant_burst_in_a_vectorised_round_names_each_agents_payments():
    """Thirty agents in one batch: their k-th payments are folded together (Baselines._round)."""
    agents = [eip55("0x" + f"{0x5000 + a:040x}") for a in range(30)]
    h = Harness(NOVELTY.format(n=3))
    h.feed([h.settle(T0 + i * 20_000, 1000, agent=a) for i in range(10) for a in agents])
    first = h.n
    ds = h.feed([h.settle(T0 + 900_000 + i * 1000, 1000, agent=a, merchant=_merchant(i))
                 for i in range(3) for a in agents])
    assert sorted((d.agent, d.observed, tuple(d.event_ids)) for d in ds) == sorted(
        (a, 3, tuple(f"e{first + 1 + i * 30 + k}" for i in range(3))) for k, a in enumerate(agents))


def test_new_merchant_burst_across_a_restore_mid_burst():
    h = Harness(NOVELTY.format(n=6))
    _warm(h)
    assert h.feed([h.settle(T0 + 900_000 + i * 1000, 1000, merchant=_merchant(i)) for i in range(3)]) == []
    _restart(h)
    ds = h.feed([h.settle(T0 + 903_000 + i * 1000, 1000, merchant=_merchant(3 + i)) for i in range(3)])
    assert [(d.rule, d.observed, d.event_ids) for d in ds] == [
        ("new_merchant_burst", 6, [f"e{i}" for i in range(11, 17)])]


def test_new_merchant_burst_ids_are_bounded_by_the_ring():
    h = Harness("[defaults]\nwarn_cooldown_seconds = 0\n" + NOVELTY.format(n=NEWM_SLOTS))
    _warm(h)
    ds = h.feed([h.settle(T0 + 900_000 + i * 1000, 1000, merchant=_merchant(i)) for i in range(NEWM_SLOTS + 4)])
    assert [d.observed for d in ds] == [NEWM_SLOTS] * 5
    assert ds[0].event_ids == [f"e{i}" for i in range(11, 27)]
    assert ds[-1].event_ids == [f"e{i}" for i in range(15, 31)]        # the newest 16 of the 20
    assert all(len(d.event_ids) == NEWM_SLOTS for d in ds)


def test_a_checkpoint_from_before_the_ids_restores_and_names_what_followed():
    h = Harness(FAILS + NOVELTY.format(n=6))
    _warm(h)                                                          # e1..e10
    assert h.feed([h.failed_verify(T0 + 900_000 + i * 100) for i in range(12)]) == []        # v11..v22
    assert h.feed([h.settle(T0 + 901_000 + i * 1000, 1000, merchant=_merchant(i)) for i in range(3)]) == []
    _restart(h, old_shape=True)
    ds = h.feed([h.failed_verify(T0 + 905_000 + i * 100) for i in range(8)])                 # v26..v33
    assert [(d.rule, d.observed, d.event_ids) for d in ds] == [
        ("failed_verifications", 20, [f"v{i}" for i in range(26, 34)])]        # the counts are whole
    ds = h.feed([h.settle(T0 + 906_000 + i * 1000, 1000, merchant=_merchant(3 + i)) for i in range(3)])
    assert [(d.rule, d.observed, d.event_ids) for d in ds] == [("new_merchant_burst", 6, ["e34", "e35", "e36"])]


def test_id_ring_orders_by_time_with_the_crossing_event_last():
    ring = IdRings(4)
    times = [0] * 4
    for seq, (t, eid) in enumerate([(10, "a"), (50, "b"), (30, "c"), (30, "d"), (40, "e")]):
        times[seq % 4] = t
        ring.put(7, seq, eid)
    assert ring.counted(7, times, 5, 20) == ["c", "d", "b", "e"]      # "a" was overwritten by "e"
    assert ring.counted(7, times, 5, 35) == ["b", "e"]
    assert ring.counted(8, times, 5, 0) == []
    back = IdRings.restore(4, msgspec.msgpack.decode(msgspec.msgpack.encode(ring.snapshot(8))))
    assert back.rows == ring.rows and IdRings.restore(4, ring.snapshot(7)).rows == {}


def test_a_finding_decision_names_its_payments_records_up_to_the_count_rules_bound():
    """A transaction moving the agent's tokens in many Transfer logs (a batch of authorizations), no settle:
    one shadow_spend finding naming every transfer record. Its decision names them too, up to 64 (the count
    rules' bound, FAIL_SLOTS; it was 20), the first ones first; the finding on watcher.findings keeps all."""
    from watcher.simulate.records import encode, fake_hash, transfer_record

    for logs in (30, 70):
        h = Harness("[defaults.anomaly]\nenabled = false\n")
        h.feed([h.settle(T0, 10)])                                   # the merchant: a known payee
        tx = fake_hash("batch", logs)
        h.feed([encode(transfer_record(ts_ms=T0 + 1000, payer=AGENT, to="0x" + "22" * 20, amount=1000, tx=tx,
                                       log_index=i, status="confirmed")) for i in range(logs)])
        ds = h.feed([h.settle(T0 + 400_000, 10)])                    # past the shadow grace
        [shadow] = [d for d in ds if d.rule == "finding.shadow_spend"]
        named = [f"8453:{tx}:{i}" for i in range(logs)]
        assert shadow.event_ids == named[:FAIL_SLOTS] and len(shadow.event_ids) == min(logs, 64)
