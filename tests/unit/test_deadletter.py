"""A dead letter carries the record whole, except a record too large for its dead letter to fit Kafka's
default 1 MB message limit: refused by the broker, it would stop the daemon at the same offset after every
restart. Then the first bytes are kept, with the whole size and where the record is."""

from __future__ import annotations

import msgspec
import pytest

from watcher.sources.deadletter import (MAX_HEADER_BYTES, MAX_RAW_BYTES, DeadLetter, decode_dead_letter,
                                        dead_letter_value, make_dead_letter, plan_redrive, summarize)

KAFKA_DEFAULT_MAX_MESSAGE = 1_048_588


def test_a_record_is_kept_whole():
    raw = b'{"type": "x402.settle"' + b"x" * 10_000
    dl = decode_dead_letter(dead_letter_value(make_dead_letter("bad_json", "truncated", "x402.payments", 3, 77,
                                                               b"0xabc", raw)))
    assert dl.raw() == raw and dl.rawSize is None and dl.offset == 77


def test_a_huge_record_keeps_its_head_and_fits_one_kafka_message():
    raw = bytes(range(256)) * 4_000           # 1,024,000 bytes, as large as a default input topic allows
    value = dead_letter_value(make_dead_letter("too_large", "1024000 bytes > 16384", "x402.payments", 1, 5,
                                               b"k" * 100_000, raw))
    assert len(value) + 200 < KAFKA_DEFAULT_MAX_MESSAGE          # headers are under 200 bytes
    dl = decode_dead_letter(value)
    assert dl.raw() == raw[:MAX_RAW_BYTES] and dl.rawSize == len(raw)
    assert "x402.payments[1]@5" in dl.detail


def test_the_dead_letters_kafka_key_is_cut_too():
    """Keyed by the whole source key, a 700 KB record with a 120 KB key still made a message over 1 MB."""
    from types import SimpleNamespace

    from watcher.config import load_settings
    from watcher.daemon import Daemon

    daemon = Daemon(load_settings())
    m = SimpleNamespace(topic="x402.payments", partition=0, offset=9, key=b"k" * 120_000, value=b"v" * 700_000,
                        headers=[("h", b"x" * 100_000)] * 3)
    topic, key, value, headers = daemon._dead_letter("too_large", "big", m)
    assert len(key) + len(value) + sum(len(h) + len(v) for h, v in headers) < KAFKA_DEFAULT_MAX_MESSAGE
    assert key == m.key[:len(key)] and decode_dead_letter(value).offset == 9
    assert decode_dead_letter(value).keySize == 120_000


def test_the_source_records_headers_are_kept_in_order():
    """They were dropped: a re-published record lost its trace ids, content types, producer metadata."""
    from types import SimpleNamespace

    from watcher.config import load_settings
    from watcher.daemon import Daemon

    hdrs = [("trace-id", b"t-1"), ("content-type", b"application/json"), ("null", None), ("trace-id", b"\xff")]
    m = SimpleNamespace(topic="x402.payments", partition=2, offset=4, key=b"0xabc", value=b"{oops", headers=hdrs)
    _, _, value, _ = Daemon(load_settings())._dead_letter("bad_json", "truncated", m)
    dl = decode_dead_letter(value)
    assert dl.source_headers() == hdrs and dl.key() == b"0xabc" and dl.cut() == []
    assert dl.headersSize is None and dl.keySize is None


def test_headers_past_the_bound_keep_the_whole_ones_that_fit_and_say_so():
    hdrs = [("a", b"1" * 10_000), ("b", b"2" * 10_000), ("c", b"3")]
    dl = decode_dead_letter(dead_letter_value(make_dead_letter("too_large", "big", "t", 0, 1, None, b"x", hdrs)))
    assert dl.source_headers() == hdrs[:1]                    # c would fit, but comes after the cut
    assert dl.headersSize == 20_004 and dl.headersSize > MAX_HEADER_BYTES
    assert dl.cut() == ["headers (10001 of 20004 bytes kept)"]


def test_a_dead_letter_written_before_headers_were_kept_still_decodes():
    old = (b'{"reason":"bad_json","detail":"d","topic":"x402.payments","partition":1,"offset":7,'
           b'"key_b64":null,"raw_b64":"e29vcHM=","deadLetteredAt":"2026-11-20T10:00:00Z","rawSize":null}')
    dl = decode_dead_letter(old)
    assert dl.headers is None and dl.source_headers() == [] and dl.raw() == b"{oops" and dl.cut() == []
    with pytest.raises(msgspec.DecodeError):
        decode_dead_letter(b'{"reason": "bad_json"}')


def _dl(reason: str, topic: str, offset: int, at: str, **kw) -> DeadLetter:
    return DeadLetter(reason, "d", topic, 0, offset, None, "", at, **kw)


def test_summary_counts_by_reason_and_source_topic_oldest_and_newest():
    letters = [_dl("bad_json", "pay", 1, "2026-11-20T10:00:00.5Z"), _dl("bad_json", "pay", 2, "2026-11-20T10:00:00Z"),
               _dl("too_large", "chain", 3, "2026-11-21T09:00:00Z", rawSize=800_000)]
    assert summarize(letters, unreadable=1) == {
        "total": 3, "unreadable": 1, "byReason": {"bad_json": 2, "too_large": 1},
        "bySourceTopic": {"pay": 2, "chain": 1}, "oldest": "2026-11-20T10:00:00Z",   # by time, not by text
        "newest": "2026-11-21T09:00:00Z", "cut": 1}


def test_a_redrive_sends_each_source_record_once_and_refuses_cut_ones():
    a = _dl("too_large", "pay", 5, "2026-11-20T10:00:00Z")
    again = _dl("too_large", "pay", 5, "2026-11-20T10:05:00Z")     # dead-lettered twice (a crash before commit)
    cut = _dl("too_large", "pay", 6, "2026-11-20T10:01:00Z", rawSize=900_000)
    key_cut = _dl("too_large", "pay", 7, "2026-11-20T10:02:00Z", keySize=5_000)
    plan = plan_redrive([again, cut, a, key_cut])
    assert plan.send == [a] and plan.cut == [cut, key_cut] and plan.repeats == 1
    assert cut.cut() == ["record (700000 of 900000 bytes kept)"] and key_cut.cut() == ["key (4096 of 5000 bytes kept)"]


def test_deadletters_help_says_what_it_reads_writes_and_exits_with(capsys):
    from watcher.cli.main import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["deadletters", "--help"])
    out = capsys.readouterr().out
    for word in ("--bootstrap", "--config", "--list", "--reason", "--limit", "--redrive", "--dry-run", "--json",
                 "exit status", "examples", "dedupe", "consumer group", "source offset"):
        assert word in out, word


@pytest.mark.parametrize("argv, complaint", [(["--redrive"], "--redrive needs --reason"),
                                             (["--dry-run"], "--dry-run goes with --redrive"),
                                             (["--limit", "3"], "--limit goes with --list")])
def test_deadletters_wrong_usage_exits_2_before_connecting(argv, complaint, capsys):
    from watcher.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["deadletters", "--bootstrap", "127.0.0.1:1", *argv])
    assert exc.value.code == 2 and complaint in capsys.readouterr().err


def test_offsets_never_delivered_are_counted_and_logged(caplog):
    """Records deleted by retention before a lagging watcher read them left no trace: the first fetched
    offset past the covered one was simply taken. They are now counted and the range logged (a gap of one
    offset, a transaction marker, is counted only)."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    from watcher.config import load_settings
    from watcher.daemon import Daemon
    from watcher.pipeline import Shard
    from watcher.simulate.records import encode, fake_hash, settle_record

    d = Daemon(load_settings(), live_clock=False)
    d.shards[0], d.covered[0] = Shard(), {"x402.payments": 10}
    tp = TopicPartition("x402.payments", 0)

    def msg(offset):
        value = encode(settle_record(event_id=f"e{offset}", ts_ms=1_790_000_000_000, payer="0x" + "11" * 20,
                                     pay_to="0x" + "22" * 20, amount=5, tx=fake_hash(offset)))
        return SimpleNamespace(topic=tp.topic, partition=0, offset=offset, key=None, value=value, headers=())

    asyncio.run(d._process({tp: [msg(10), msg(11)]}))
    assert d.counters.skipped_offsets == 0
    asyncio.run(d._process({tp: [msg(13)]}))                  # one offset: a transaction marker
    assert d.counters.skipped_offsets == 1 and "never delivered" not in caplog.text
    asyncio.run(d._process({tp: [msg(500), msg(501)]}))
    assert d.counters.skipped_offsets == 487 and d.covered[0]["x402.payments"] == 502
    assert "x402.payments[0]: offsets 14..499 were never delivered" in caplog.text
    assert d.counters.consumed == 5
