"""The SDK hooks on the x402 SDK's own facilitator classes (a fake scheme: no chain), with plain values."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from x402 import x402Facilitator, x402FacilitatorSync
from x402.schemas import PaymentAbortedError, parse_payment_payload, parse_payment_requirements

from tests.tap.conftest import PAYER, TX, FakeExact, body
from watcher.events import Decoder
from watcher.tap.breakers import Gate, StaticBreakerView
from watcher.tap.hooks import wire_facilitator
from watcher.tap.metrics import TapMetrics
from watcher.tap.records import encode

DEC = Decoder(max_future_skew_ms=None)


def models(version: int = 2):
    b = body(version)
    pp = parse_payment_payload(b["paymentPayload"])
    return pp, parse_payment_requirements(pp.x402_version, b["paymentRequirements"])


def sync_fac():
    fac, scheme = x402FacilitatorSync(), FakeExact()
    fac.register(["eip155:8453"], scheme)
    fac.register_v1(["base"], scheme)
    return fac, scheme


@pytest.mark.parametrize("version", [1, 2])
def test_verify_and_settle_publish_records(listpub, version):
    fac, _ = sync_fac()
    wire_facilitator(fac, listpub, StaticBreakerView(), name="sdk")
    pp, req = models(version)
    assert fac.verify(pp, req).is_valid
    assert fac.settle(pp, req).success
    kinds = [r["type"] for r in listpub.records]
    assert kinds == ["x402.verify", "x402.settle"]
    for r in listpub.records:
        obs = DEC.decode(encode(r))
        assert obs.agent == PAYER and obs.source == "sdk" and r["x402Version"] == version
    assert listpub.records[1]["settleResponse"]["transaction"] == TX
    assert listpub.records[0]["paymentPayload"] == body(version)["paymentPayload"]   # unchanged wire form


def test_failures_publish_records(listpub):
    fac, scheme = sync_fac()
    wire_facilitator(fac, listpub, None)
    pp, req = models()
    scheme.valid, scheme.settle_ok = False, False
    assert not fac.verify(pp, req).is_valid
    assert not fac.settle(pp, req).success
    scheme.raise_on_settle = RuntimeError("rpc down")
    with pytest.raises(RuntimeError):
        fac.settle(pp, req)
    v, s1, s2 = listpub.records
    assert v["verifyResponse"] == {"isValid": False, "invalidReason": "invalid_exact_evm_payload_signature",
                                   "payer": PAYER}
    assert s1["settleResponse"]["success"] is False and s1["settleResponse"]["errorReason"] == "transaction_failed"
    assert s2["settleResponse"]["errorReason"] == "rpc down"
    assert s1["id"] == s2["id"]          # the same failed payment: deduplicated by the watcher
    for r in listpub.records:
        DEC.decode(encode(r))


@pytest.mark.parametrize("state,reason", [("open", "spendwatch_agent_frozen"), ("held", "spendwatch_agent_held")])
def test_frozen_payer_is_refused_before_verify_and_settle(listpub, state, reason):
    fac, scheme = sync_fac()
    metrics = TapMetrics(CollectorRegistry())
    view = StaticBreakerView({PAYER: state})
    wire_facilitator(fac, listpub, Gate(view, metrics=metrics))
    pp, req = models()
    with pytest.raises(PaymentAbortedError) as exc:
        fac.verify(pp, req)
    assert exc.value.reason == reason
    with pytest.raises(PaymentAbortedError):
        fac.settle(pp, req)
    assert scheme.calls == 0                                     # never reached the scheme
    (rec,) = listpub.records                                     # the refusal is recorded (verify only)
    assert rec["verifyResponse"]["invalidReason"] == reason
    assert DEC.decode(encode(rec)).status == "invalid"
    assert metrics.refused.labels("verify", state)._value.get() == 1
    view.release(PAYER)
    assert fac.verify(pp, req).is_valid


class Unknown:
    def state(self, wallet):
        return None

    def is_blocked(self, wallet):
        return None


def test_unknown_state_fails_open_by_default_and_closed_when_asked(listpub):
    metrics = TapMetrics(CollectorRegistry())
    fac, _ = sync_fac()
    wire_facilitator(fac, listpub, Gate(Unknown(), metrics=metrics))
    pp, req = models()
    assert fac.verify(pp, req).is_valid
    assert metrics.breaker_unknown.labels("open")._value.get() == 1
    assert metrics.view_stale._value.get() == 1

    fac2, _ = sync_fac()
    wire_facilitator(fac2, listpub, Unknown(), fail_mode="closed")
    with pytest.raises(PaymentAbortedError) as exc:
        fac2.verify(pp, req)
    assert exc.value.reason == "spendwatch_breaker_unavailable"


async def test_async_facilitator_and_a_publisher_that_raises():
    class Broken:
        def offer(self, record):
            raise RuntimeError("boom")

    fac, scheme = x402Facilitator(), FakeExact()
    fac.register(["eip155:8453"], scheme)
    tap = wire_facilitator(fac, Broken(), StaticBreakerView())
    pp, req = models()
    assert (await fac.verify(pp, req)).is_valid        # a broken publisher never fails the payment
    assert (await fac.settle(pp, req)).success
    assert tap.errors == 2


def test_stale_gauge_follows_the_view_without_payments():
    """The stale flag is computed when Prometheus scrapes, so it clears (and rises) with no payment."""
    import time

    from watcher.tap.breakers import AdminBreakerView

    registry = CollectorRegistry()
    view = AdminBreakerView("http://127.0.0.1:9", "t", stale_after_seconds=30)
    Gate(view, metrics=TapMetrics(registry))

    def stale() -> float:
        return registry.get_sample_value("spendwatch_tap_breaker_view_stale")

    assert stale() == 1.0            # never polled
    view._last_ok = time.monotonic()
    assert stale() == 0.0            # a poll succeeded: current, though no payment was checked
    view._last_ok = time.monotonic() - 31
    assert stale() == 1.0            # the poll is too old
