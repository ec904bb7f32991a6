"""A record or a stage that makes the pipeline raise does not stop the daemon (a poison pill crash-looped it:
the restart replayed the same records from the checkpoint and raised again). The record is dead-lettered
with reason internal_error and its source; the shard stays as it was without it; a failing stage is
counted and logged, and the later stages still run."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import msgspec
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from watcher.config import load_settings
from watcher.daemon import Daemon
from watcher.events import Decoder
from watcher.events.addresses import key_address
from watcher.pipeline import Shard
from watcher.simulate.records import encode, fake_hash, settle_record
from watcher.sources.deadletter import decode_dead_letter

A = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
B = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
M = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
BAD = "0x" + "ba" * 20            # the merchant the configured category callable fails on
T = 1_790_000_000_000
D = Decoder(max_future_skew_ms=None)
TOPIC = "x402.payments"


def raw(i: int, payer: str = A, pay_to: str = M, ts: int = T, amount: int = 1_000) -> bytes:
    return encode(settle_record(event_id=f"e{i}", ts_ms=ts, payer=payer, pay_to=pay_to, amount=amount,
                                tx=fake_hash(i)))


class Broken:
    """The category callable the daemon is configured with, raising for one merchant until fixed (as a bad
    rate card entry would)."""

    def __init__(self) -> None:
        self.fixed = False

    def __call__(self, merchant: str, resource: str | None) -> str | None:
        if merchant.lower() == BAD and not self.fixed:
            raise ValueError(f"rate card: no price for {merchant}")
        return "data"


def _state(shard: Shard) -> bytes:
    return msgspec.msgpack.encode(shard.snapshot())


def test_a_record_whose_fold_raises_is_left_out_and_the_shard_is_as_without_it():
    cat = Broken()
    records = [raw(1), raw(2, payer=B, pay_to=BAD, ts=T + 50_000), raw(3, ts=T + 1_000), raw(1)]
    batch = [D.decode(r) for r in records]
    shard = Shard(categorize=cat)
    out = shard.apply(batch)
    assert [(i, type(e)) for i, e in out.failed] == [(1, ValueError)]
    assert (out.processed, out.duplicates, len(out.deltas)) == (3, 1, 2)
    assert out.stream_positions == [0, 2]
    kept = out.without_failed(batch)
    assert [o.event_id for o in kept] == ["e1", "e3", "e1"] and out.stream_positions == [0, 1]

    clean = Shard(categorize=cat)
    clean.apply([batch[0], batch[2], batch[3]])
    assert _state(shard) == _state(clean)           # dedupe, join, windows, watermark and stats alike
    assert shard.watermark_ms == T + 1_000          # not moved by the failed record

    cat.fixed = True                                 # the fix, then the re-drive: counted, not a duplicate
    again = shard.apply([D.decode(records[1])])
    assert (again.failed, again.duplicates, again.processed) == ([], 0, 1)
    assert shard.agent_totals(B, T + 50_000)[0][-1] == 1_000


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None, list | None]] = []

    async def send(self, topic, value, key=None, headers=None):
        self.sent.append((topic, value, key, headers))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def _daemon(stages=None, categorize=None) -> Daemon:
    d = Daemon(load_settings(), stages, categorize=categorize, live_clock=False)
    d.producer = FakeProducer()
    d.shards[0], d.covered[0] = d._new_shard(), {TOPIC: 10}
    for stage in d.stages:
        stage.restore(0, None)
    return d


def _msg(offset: int, value: bytes, key: bytes | None = b"k") -> SimpleNamespace:
    return SimpleNamespace(topic=TOPIC, partition=0, offset=offset, key=key, value=value,
                           headers=[("trace-id", f"t{offset}".encode())])


def _process(d: Daemon, msgs) -> None:
    asyncio.run(d._process({TopicPartition(TOPIC, 0): msgs}))


def test_the_daemon_dead_letters_a_record_whose_fold_raises_with_its_source_and_goes_on():
    d = _daemon(categorize=Broken())
    poison = raw(2, payer=B, pay_to=BAD)
    _process(d, [_msg(10, raw(1)), _msg(11, b"{not json"), _msg(12, poison, key=B.encode()), _msg(13, raw(3))])
    letters = [decode_dead_letter(v) for t, v, _, _ in d.producer.sent if t == d.k.dead_letter_topic]
    assert [(dl.reason, dl.offset) for dl in letters] == [("bad_json", 11), ("internal_error", 12)]
    dl = letters[1]      # the message at offset 12, though the shard saw it third (offset 11 never decoded)
    assert (dl.where, dl.raw(), dl.key(), dl.source_headers()) == (f"{TOPIC}[0]@12", poison, B.encode(),
                                                                   [("trace-id", b"t12")])
    assert "ValueError" in dl.detail and "rate card: no price" in dl.detail
    c = d.counters
    assert (c.consumed, c.processed, c.dead_lettered) == (4, 2, 2)   # events in = processed + dead-lettered
    assert d.dlq_reasons["internal_error"] == 1 and d.covered[0][TOPIC] == 14
    shard = d.shards[0]
    assert shard.agent_totals(A, T)[0][-1] == 2_000 and [key_address(k) for k in shard.agents.keys] == [A]


def test_a_cause_that_fails_every_record_logs_its_traceback_once(caplog):
    """A categorize function that fails on every record (a bad reload) dead-letters each one with a line, but
    logged a full traceback for each: thousands per batch. Once per exception type, as stages do."""
    d = _daemon(categorize=Broken())
    with caplog.at_level(logging.ERROR, logger="watcher.daemon"):
        _process(d, [_msg(10 + i, raw(i, payer=B, pay_to=BAD), key=B.encode()) for i in range(1, 6)])
    lines = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert len(lines) == 5 and d.dlq_reasons["internal_error"] == 5
    assert [r.exc_info is not None for r in lines] == [True, False, False, False, False]


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[int, list[str], list]] = []

    def on_batch(self, ctx) -> None:
        self.seen.append((ctx.partition, [o.event_id for o in ctx.observations], list(ctx.decisions)))

    def snapshot(self, partition):
        return None

    def restore(self, partition, data):
        pass

    def drop(self, partition):
        pass


class BoomStage(Recorder):
    """Decides something, then raises (a half-run stage)."""

    def on_batch(self, ctx) -> None:
        ctx.decisions.append(SimpleNamespace(kind="warn", rule="boom", agent=A))
        raise KeyError("no such row")


def test_a_stage_that_raises_is_counted_and_logged_and_the_later_stages_still_run(caplog):
    from watcher.observe.server import DaemonCollector

    boom, after = BoomStage(), Recorder()
    d = _daemon(stages=[boom, after])
    with caplog.at_level(logging.ERROR, logger="watcher.daemon"):
        _process(d, [_msg(10, raw(1)), _msg(11, raw(2))])
        _process(d, [_msg(12, raw(3))])
    assert d.stage_errors.counts == {"boom": 2}
    assert [(p, ids, [x.rule for x in dec]) for p, ids, dec in after.seen] == [
        (0, ["e1", "e2"], ["boom"]), (0, ["e3"], ["boom"])]          # ran on both, with what boom decided
    assert d.covered[0][TOPIC] == 13 and d.counters.processed == 3   # the batches were taken all the same
    [first, *rest] = [r for r in caplog.records if "stage boom raised" in r.getMessage()]
    assert f"{TOPIC}[0]@10..11" in first.getMessage() and "KeyError" in first.getMessage() and first.exc_info
    assert rest == []                                # the same failure again: counted, not logged again
    reg = CollectorRegistry()
    reg.register(DaemonCollector(d))
    fam = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert {s.labels["stage"]: s.value for s in fam["spendwatch_stage_errors"].samples
            if s.name.endswith("_total")} == {"boom": 2.0, "recorder": 0.0}
    dead = {s.labels["reason"]: s.value for s in fam["spendwatch_dead_letters"].samples if s.name.endswith("_total")}
    assert dead["internal_error"] == 0.0             # exported from the start, so increase() sees the first one


def test_a_failing_stage_is_logged_again_after_a_quiet_interval_with_the_count_in_between(caplog):
    from watcher.failures import LOG_INTERVAL_SECONDS, StageErrors

    now = [0.0]
    errors = StageErrors(clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="watcher.daemon"):
        for k in range(5):
            errors.failed("detect", 3, (TOPIC, 10 * k, 10 * k + 9), KeyError("x"))
        now[0] = LOG_INTERVAL_SECONDS + 1
        errors.failed("detect", 3, None, KeyError("x"))
        errors.failed("detect", 3, None, TypeError("y"))  # a new kind of failure: logged with its traceback
    lines = [r for r in caplog.records if "stage detect raised" in r.getMessage()]
    assert [bool(r.exc_info) for r in lines] == [True, False, True]
    assert "4 more failure(s)" in lines[1].getMessage() and "no records (clock tick)" in lines[1].getMessage()
    assert errors.counts["detect"] == 7



def test_a_record_whose_category_row_cannot_be_made_is_not_counted_for_the_next():
    """The agent's row was listed before the category's was made: when making it failed (out of memory), the
    lists went out of step and the next record's amount was added twice (800 instead of 400)."""
    from tests.unit.test_shard import A as PAYER, T as T0, settle

    def shard(fail_first: bool) -> Shard:
        sh = Shard(categorize=lambda merchant, resource: "data")
        real, calls = sh.categories.row, []

        def row(key):
            calls.append(key)
            if fail_first and len(calls) == 1:
                raise MemoryError("no room for a row")
            return real(key)
        sh.categories.row = row
        return sh

    failing, reference = shard(True), shard(False)
    out = failing.apply([settle(1, amount=400), settle(2, amount=400)])
    assert [i for i, _ in out.failed] == [0]
    reference.apply([settle(2, amount=400)])
    assert failing.agent_totals(PAYER, T0) == reference.agent_totals(PAYER, T0)
    assert failing.category_totals(PAYER, "data", T0) == reference.category_totals(PAYER, "data", T0)
