"""The breaker state machine and signatures, with plain values."""

from __future__ import annotations

import msgspec
import pytest

from watcher.breaker.signing import SignatureError, sign, verify
from watcher.breaker.state import CLOSED, HALF_OPEN, HELD, OPEN, Breakers, Timing
from watcher.breaker.webhook import backoff, webhook_body
from watcher.detect.decision import Decision, rfc3339

A = "0x" + "11" * 20
T0 = 1_795_305_600_000


def dec(kind="freeze", id="d-1", at=T0, rule="cap_1m"):
    return Decision(id=id, kind=kind, agent=A, rule=rule, source="policy", observed=3, threshold=2,
                    unit="usdc_base_units", window="1m", event_ids=["e1"], occurred_at=rfc3339(at), reason="r")


def test_freeze_cooldown_probation_close():
    br = Breakers(Timing(cooldown_ms=1000, probation_ms=5000, cooldown_max_ms=10_000))
    [e] = br.on_decision(dec())
    assert (e.kind, e.webhook, e.previous, e.state) == ("opened", "freeze", CLOSED, OPEN)
    assert br.on_decision(dec()) == [] and br.on_decision(dec(id="d-2")) == []   # repeat / already open
    assert br.tick(T0 + 999) == []
    [h] = br.tick(T0 + 1500)
    assert (h.kind, h.webhook, h.state, h.at_ms) == ("half_open", "unfreeze", HALF_OPEN, T0 + 1000)
    [c] = br.tick(T0 + 6000)
    assert (c.kind, c.state, c.webhook) == ("closed", CLOSED, "unfreeze") and br.by_agent == {}


def test_trip_in_probation_doubles_cooldown():
    br = Breakers(Timing(cooldown_ms=1000, probation_ms=5000, cooldown_max_ms=3000))
    br.on_decision(dec())
    br.tick(T0 + 1000)
    [e] = br.on_decision(dec(id="d-2", at=T0 + 2000))
    assert e.state == OPEN and e.breaker.trips == 2 and e.breaker.reopen_ms == T0 + 4000
    br.tick(T0 + 4000)
    br.on_decision(dec(id="d-3", at=T0 + 4100))
    assert br.get(A).reopen_ms == T0 + 4100 + 3000  # capped


def test_hold_release_approve_caps():
    br = Breakers(Timing(cooldown_ms=1000, probation_ms=5000))
    e = br.hold(A, T0, "admin:x", "c1", "")
    assert (e.state, e.webhook) == (HELD, "freeze")
    assert br.hold(A, T0, "admin:x", "c1", "") is None                  # same command: once
    assert br.on_decision(dec()) == [] and br.tick(T0 + 10**9) == []     # held ignores decisions and clock
    r = br.release(A, T0 + 1, "admin:x", "c2", "")
    assert (r.state, r.webhook) == (HALF_OPEN, "unfreeze")
    r2 = br.release(A, T0 + 2, "admin:x", "c3", "")
    assert r2.state == CLOSED and br.release(A, T0 + 3, "admin:x", "c4", "") is None
    [esc] = br.on_decision(dec("escalate", "d-9"))
    assert (esc.kind, esc.webhook, esc.state) == ("escalated", "escalate", CLOSED)
    assert br.on_decision(dec("escalate", "d-10")) == []                # one question at a time
    a = br.approve(A, T0 + 5, "admin:x", "c5", "")
    assert a.kind == "approved" and a.webhook is None and br.get(A).escalation is None
    assert br.approve(A, T0 + 6, "admin:x", "c6", "") is None
    c = br.set_caps(A, {"1m": 5}, T0 + 7, "admin:x", "c7")
    assert c.breaker.caps == {"1m": 5} and br.by_agent[A].caps == {"1m": 5}


def test_hold_of_open_sends_no_second_freeze():
    br = Breakers()
    br.on_decision(dec())
    assert br.hold(A, T0, "admin", "c", "").webhook is None


def test_ids_are_stable_and_snapshot_round_trips():
    a, b = Breakers(Timing(cooldown_ms=10)), Breakers(Timing(cooldown_ms=10))
    ea, eb = a.on_decision(dec()) + a.tick(T0 + 10), b.on_decision(dec()) + b.tick(T0 + 20)
    assert [e.id for e in ea] == [e.id for e in eb]
    assert webhook_body(ea[1]) == webhook_body(eb[1])                    # body independent of tick time
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(a.snapshot()))
    c = Breakers.restore(snap, a.timing)
    assert c.by_agent == a.by_agent and c.seq == a.seq and c.on_decision(dec()) == []


def test_fold_applies_newer_only():
    a = Breakers()
    [e] = a.on_decision(dec())
    fresh = Breakers()
    fresh.fold(e.breaker.seq, e.breaker, e.cause)
    assert fresh.state(A) == OPEN and fresh.on_decision(dec()) == []
    fresh.fold(e.breaker.seq, msgspec.structs.replace(e.breaker, state=CLOSED))
    assert fresh.state(A) == OPEN


def test_body_shape():
    [e] = Breakers().on_decision(dec())
    body = msgspec.json.decode(webhook_body(e, name="bot-1"))
    assert set(body) == {"id", "type", "agent", "wallet", "reason", "evidence", "breaker", "occurred_at"}
    assert body["type"] == "freeze" and body["agent"] == "bot-1" and body["wallet"] == A
    assert body["breaker"]["state"] == "open" and body["evidence"]["decision_id"] == "d-1"
    assert body["occurred_at"] == rfc3339(T0) and isinstance(body["evidence"]["observed"], int)


SECRET, OLD = b"s" * 32, b"o" * 32


def test_signature_roundtrip_rotation_tamper_stale():
    body = b'{"id":"b-1"}'
    h = sign(body, [SECRET, OLD], t=1000)
    assert h.startswith("t=1000,v1=") and h.count("v1=") == 2
    assert verify(body, h, [SECRET], now=1000) == 1000
    assert verify(body, h, [OLD], now=1100) == 1000                        # rotation: either secret
    with pytest.raises(SignatureError) as e:
        verify(body + b" ", h, [SECRET], now=1000)
    assert e.value.reason == "no_match"
    with pytest.raises(SignatureError) as e:
        verify(body, h, [b"x" * 32], now=1000)
    assert e.value.reason == "no_match"
    with pytest.raises(SignatureError) as e:
        verify(body, h, [SECRET], now=1000 + 301)
    assert e.value.reason == "stale"
    with pytest.raises(SignatureError) as e:
        verify(body, "v1=abc", [SECRET], now=1000)
    assert e.value.reason == "malformed"
    forged = h.replace("t=1000", "t=1200")                                # moving t breaks the MAC
    with pytest.raises(SignatureError):
        verify(body, forged, [SECRET], now=1200)


def test_backoff_grows_with_jitter_and_cap():
    assert backoff(0, 0.2, 10, lambda: 0.0) == 0.1 and backoff(0, 0.2, 10, lambda: 1.0) == 0.2
    assert backoff(3, 0.2, 10, lambda: 1.0) == 1.6 and backoff(30, 0.2, 10, lambda: 1.0) == 10


def test_a_hold_answers_the_pending_escalation():
    """Escalated, then held instead of approved, then released: the next escalation is asked again (an
    escalation left on the breaker swallowed every later one: no escalate webhook, yet a freeze at its
    timeout); PagerDuty resolves the answered one."""
    from watcher.breaker.notify import pagerduty_events

    br = Breakers(Timing(cooldown_ms=1000, probation_ms=5000))
    br.on_decision(dec("escalate", "d-esc-1"))
    h = br.hold(A, T0 + 1, "admin:x", "c1", "")
    assert br.get(A).escalation is None and h.evidence == {"escalation": "d-esc-1"}
    assert [(ev["event_action"], ev["dedup_key"]) for ev in pagerduty_events(h, "k")][0] == \
        ("resolve", f"spendwatch/{A}/escalation/d-esc-1")
    br.release(A, T0 + 2, "admin:x", "c2", "")
    br.release(A, T0 + 3, "admin:x", "c3", "")
    [esc] = br.on_decision(dec("escalate", "d-esc-2", at=T0 + 4))
    assert (esc.kind, esc.webhook) == ("escalated", "escalate") and br.get(A).escalation == "d-esc-2"
