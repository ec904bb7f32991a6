"""Property: whatever the forks (shallower than `confirmations`), the tracker ends with every transfer of
the final chain confirmed exactly once, every transfer of a dropped block reverted exactly once, and
money counted (pending + confirmed - reverted) equal to the final chain's."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.chain.abi import Header
from watcher.chain.logs import Transfer
from watcher.chain.reorg import ChainTracker, ReorgDetected

TOKEN = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
AGENT = "0xaAaAaAaaAaAaAaaAaAAAAAAAAaaaAaAaAaaAaaAa"
_hashes = itertools.count(1)


def _block(parent: Header, n_transfers: int, value: int) -> tuple[Header, list[Transfer]]:
    h = Header(parent.number + 1, f"0x{next(_hashes):064x}", parent.hash, parent.timestamp + 2)
    return h, [Transfer(8453, TOKEN, AGENT, AGENT, value + i, f"0x{next(_hashes):064x}", i, h.number, h.hash)
               for i in range(n_transfers)]


def _sync(tracker: ChainTracker, chain: list[tuple[Header, list[Transfer]]], out: list) -> None:
    """What the bridge does on one pass, over an in-memory chain."""
    by_number = {h.number: h for h, _ in chain}
    tip = tracker.tip
    if tip is not None and by_number.get(tip.number, None) != tip:
        n = tip.number
        while n >= tracker.floor and (by_number.get(n) is None or by_number[n].hash != tracker.hash_at(n)):
            n -= 1
        out += tracker.rewind(n)
    start = tracker.tip.number + 1 if tracker.tip else chain[0][0].number
    for h, transfers in chain:
        if h.number >= start:
            try:
                out += tracker.advance(h, transfers)
            except ReorgDetected:  # pragma: no cover - the walk-back above prevents it
                raise AssertionError("advance refused a block after the walk-back")


steps = st.lists(st.one_of(
    st.tuples(st.just("extend"), st.integers(0, 3)),
    st.tuples(st.just("reorg"), st.integers(1, 3), st.integers(0, 3)),
    st.just(("sync",))), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(steps=steps, confirmations=st.integers(4, 6))
def test_every_transfer_ends_confirmed_or_reverted_once(steps, confirmations):
    genesis = Header(0, "0x" + "00" * 32, "0x" + "ff" * 32, 1000)
    chain: list[tuple[Header, list[Transfer]]] = [(genesis, [])]
    tracker = ChainTracker(confirmations=confirmations, max_depth=16)
    out: list = []
    value = itertools.count(1, 10)
    for step in steps:
        if step[0] == "extend":
            chain.append(_block(chain[-1][0], step[1], next(value)))
        elif step[0] == "reorg":
            depth = min(step[1], len(chain) - 1, confirmations - 1)
            if depth:
                del chain[-depth:]
                for _ in range(depth + 1):              # the new branch is one block longer
                    chain.append(_block(chain[-1][0], step[2], next(value)))
        _sync(tracker, chain, out)
    for _ in range(confirmations):
        chain.append(_block(chain[-1][0], 0, 0))
    _sync(tracker, chain, out)

    final = {(t.id, t.block_hash) for _, ts in chain for t in ts}
    seen: dict[tuple[str, str], list[str]] = {}
    for e in out:
        seen.setdefault((e.transfer.id, e.transfer.block_hash), []).append(e.status)
    for key, statuses in seen.items():
        assert statuses in (["pending", "confirmed"], ["pending", "reverted"]), (key, statuses)
        assert (statuses[-1] == "confirmed") == (key in final)
    assert final <= set(seen)                         # nothing of the final chain was missed
    sign = {"pending": 0, "confirmed": 1, "reverted": 0}
    assert sum(e.transfer.value * sign[e.status] for e in out) == sum(t.value for _, ts in chain for t in ts)
    assert tracker.unconfirmed_count == 0
