"""Statements of a transaction with two payers: the join keys the second payer's payment "tx:payer", and the
statement counts each payer's records (`changes`) in that payer's own row."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from watcher.events.decode import Decoder
from watcher.observe.statements import DAY_MS, StatementSettings, StatementStage
from watcher.pipeline.shard import Shard
from watcher.simulate.records import encode, fake_hash, settle_record, transfer_record

A, B = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8", "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
M = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
T0 = 20_415 * DAY_MS + 60_000
DATA = "https://api.example/v1/data"
TX = fake_hash("tx", 1)
_dec = Decoder(max_future_skew_ms=None)


def _settle(payer, amount):
    return _dec.decode(encode(settle_record(event_id=f"s-{payer}", ts_ms=T0, payer=payer, pay_to=M, amount=amount,
                                            tx=TX, resource=DATA)))


def _transfer(payer, amount, status, log_index):
    return _dec.decode(encode(transfer_record(ts_ms=T0 + 500, payer=payer, to=M, amount=amount, tx=TX,
                                              log_index=log_index, status=status, block_number=10)))


def _rows(batches):
    """(agent, category) -> (count, amount, changes) after folding `batches` through a shard and the stage."""
    stage, shard = StatementStage(StatementSettings(publish_interval_seconds=3600)), Shard(
        categorize=lambda merchant, resource: "data" if resource == DATA else None)
    stage.restore(0, None)
    stage.parts[0].last_publish_ms = T0 + 60_000     # publish nothing: rows never seen may be dropped
    for obs in batches:
        stage.on_batch(SimpleNamespace(partition=0, shard=shard, outcome=shard.apply(obs), observations=obs,
                                       now_ms=T0 + 60_000, wall_ms=T0 + 60_000, decisions=[], publish=[]))
    return {(k[1], k[3]): (r[0], r[1], r[7]) for k, r in stage.parts[0].rows.items()}


def test_a_second_payers_quiet_transfer_counts_in_its_own_row():
    """One batch: A's settle, B's settle of the same transaction, B's confirmed transfer of what B settled
    (a record that changes no amount). It is B's change, not A's (it was counted to A: changes 2 and 1)."""
    rows = _rows([[_settle(A, 1000), _settle(B, 500), _transfer(B, 500, "confirmed", 1)]])
    assert rows == {(A, "data"): (1, 1000, 1), (B, "data"): (1, 500, 2)}


def test_two_payers_moved_in_one_batch_each_take_their_own_records():
    """Both payers' transfers come before their settles (the bridge publishes at the chain head), all in one
    batch: each settle moves its payer's payment, with its payer's records, out of the uncategorized row, as
    if the settles had come first (the second move overwrote the first's: A's pending-then-confirmed record
    went to B's row and A's emptied row stayed)."""
    records = {p: [_transfer(p, amount, s, li) for s in ("pending", "confirmed")] + [_settle(p, amount)]
               for p, amount, li in ((A, 1000, 0), (B, 500, 1))}
    reference = _rows([[records[A][2], records[B][2], *records[A][:2], *records[B][:2]]])
    assert reference == {(A, "data"): (1, 1000, 3), (B, "data"): (1, 500, 3)}
    transfers_first = [*records[A][:2], *records[B][:2]]
    for settles in itertools.permutations([records[A][2], records[B][2]]):
        assert _rows([transfers_first + list(settles)]) == reference, settles
