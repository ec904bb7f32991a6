"""A dead letter carries the record whole, except a record too large for its dead letter to fit Kafka's
default 1 MB message limit: refused by the broker, it would stop the daemon at the same offset after every
restart. Then the first bytes are kept, with the whole size and where the record is."""

from __future__ import annotations

import msgspec
import pytest

from watcher.sources.deadletter import (MAX_HEADER_BYTES, MAX_RAW_BYTES, decode_dead_letter, dead_letter_value,
                                        make_dead_letter)

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

