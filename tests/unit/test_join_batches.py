"""Several payers in one transaction (a facilitator that batches settles, a bundle of user operations): each
payer's payment counts to that payer, and its findings are its own. The old join keyed a payment by its tx hash
alone: the second payer's settle was ignored and its transfer counted to the first payer."""

from tests.unit.test_shard import A, D, M, T, day
from watcher.pipeline.shard import Shard, ShardConfig
from watcher.simulate.records import encode, fake_hash, settle_record, transfer_record

B = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
TX = fake_hash("batch")
AFTER = 60_000


def _settle(payer, amount):
    return D.decode(encode(settle_record(event_id=f"s-{payer}", ts_ms=T, payer=payer, pay_to=M, amount=amount,
                                         tx=TX)))


def _transfer(payer, amount, log_index, status="confirmed"):
    return D.decode(encode(transfer_record(ts_ms=T, payer=payer, to=M, amount=amount, tx=TX, status=status,
                                           log_index=log_index, authorizer=payer)))


def _totals(sh, agent):
    s, c = sh.agent_totals(agent)
    return s[-1], c[-1]


def test_two_payers_settled_in_one_transaction_count_each_to_its_payer():
    sh = Shard(ShardConfig(shadow_grace_ms=AFTER, unsettled_after_ms=AFTER))
    sh.apply([_settle(A, 100), _settle(B, 250)])
    assert (day(sh), _totals(sh, B)) == ((100, 1), (250, 1))

    snap = sh.snapshot()                                 # a restart between the settles and the transfers
    sh = Shard.restore(snap, ShardConfig(shadow_grace_ms=AFTER, unsettled_after_ms=AFTER))
    out = sh.apply([_transfer(A, 100, 1, "pending"), _transfer(B, 250, 3, "pending"),
                    _transfer(A, 100, 1), _transfer(B, 250, 3)])
    found = out.findings + sh.advance(T + 20 * AFTER)
    assert (day(sh), _totals(sh, B)) == ((100, 1), (250, 1))
    assert found == []


def test_two_payers_of_one_bundle_with_no_settle_are_two_shadow_spends():
    sh = Shard(ShardConfig(shadow_grace_ms=AFTER, unsettled_after_ms=AFTER))
    sh.apply([_transfer(A, 100, 1), _transfer(B, 250, 3)])
    found = sh.advance(T + AFTER + 1)
    assert (day(sh), _totals(sh, B)) == ((100, 1), (250, 1))
    assert sorted((f.kind, f.agent, f.transferredAmount, f.tx) for f in found) == [
        ("shadow_spend", A, "100", TX), ("shadow_spend", B, "250", TX)]
    assert len({f.id for f in found}) == 2


def test_a_second_payer_with_a_wrong_amount_is_its_own_mismatch():
    sh = Shard()
    sh.apply([_settle(A, 100), _settle(B, 250), _transfer(A, 100, 1)])
    out = sh.apply([_transfer(B, 200, 3)])
    assert [(f.kind, f.agent, f.settledAmount, f.transferredAmount) for f in out.findings] == [
        ("amount_mismatch", B, "250", "200")]
    assert (day(sh), _totals(sh, B)) == ((100, 1), (200, 1))


def test_a_zero_value_transfer_of_another_wallet_in_a_known_transaction_is_no_payment():
    """0-value transfers cost nothing and anyone can emit one from any wallet (Shard.apply): one in a known
    transaction is not a payment of its wallet (no count, no shadow_spend)."""
    sh = Shard(ShardConfig(shadow_grace_ms=AFTER, unsettled_after_ms=AFTER))
    sh.apply([_settle(A, 100), _transfer(A, 100, 1), _transfer(B, 0, 4)])
    assert sh.advance(T + 20 * AFTER) == []
    assert (day(sh), _totals(sh, B)) == ((100, 1), (0, 0))
