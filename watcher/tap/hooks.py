"""Hooks for the x402 Python SDK's own facilitator (`x402Facilitator` or `x402FacilitatorSync`).

    fac = x402FacilitatorSync()
    register_exact_evm_facilitator(fac, signer, networks="eip155:8453")
    wire_facilitator(fac, publisher, TopicBreakerView(bootstrap), name="my-facilitator")

One call registers:
    on_before_verify / on_before_settle   refuse a payer whose breaker is open or held (AbortResult; the
                                          SDK raises PaymentAbortedError: answer isValid/success false)
                                          and publish the refusal as an x402.verify record; failing
                                          closed, also a payload naming no payer (spendwatch_payer_unknown)
    on_after_verify / on_verify_failure   publish x402.verify
    on_after_settle / on_settle_failure   publish x402.settle

Every hook is a plain function that never blocks and never raises (publishing only puts the record in
the publisher's bounded buffer), so it fits both the async and the sync facilitator and a payment is
never slowed or failed by Kafka.
"""

from __future__ import annotations

import logging
from typing import Any

from x402.schemas import AbortResult, PaymentAbortedError

from watcher.tap.breakers import BreakerView, FailMode, Gate
from watcher.tap.records import payers_of, settle_record, verify_record

log = logging.getLogger("watcher.tap.hooks")


def _dump(model: Any) -> dict:
    if model is None:
        return {}
    if isinstance(model, dict):
        return model
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def _error_text(error: BaseException | None) -> str:
    if error is None:
        return "unknown_error"
    text = str(error) or type(error).__name__
    return text[:200]


class FacilitatorTap:
    """The hook functions, bound to one publisher and one gate. `wire_facilitator` registers them."""

    def __init__(self, publisher: Any, gate: Gate | None, *, name: str = "x402-sdk") -> None:
        self.publisher, self.gate, self.name = publisher, gate, name
        self.errors = 0

    def _offer(self, build, ctx: Any, response: dict) -> None:
        try:
            payload = _dump(ctx.payment_payload)
            requirements = _dump(ctx.requirements)
            rec = build(payload, requirements, response, facilitator=self.name,
                        declared_version=payload.get("x402Version"))
            self.publisher.offer(rec)
        except Exception as exc:  # never fail a payment for a record
            self.errors += 1
            log.error("tap hook could not build or offer a record: %r", exc)

    # -- before: the breaker -------------------------------------------------------------------
    def _refuse(self, ctx: Any, where: str) -> AbortResult | None:
        if self.gate is None:
            return None
        try:
            payers = payers_of(_dump(ctx.payment_payload))
        except Exception:  # an unreadable payload names no payer: the gate's fail mode decides
            payers = []
        payer, refusal = self.gate.check_all(payers, where)
        if refusal is None:
            return None
        log.info("refused %s for %s: %s", where, payer or "an unknown payer", refusal.reason)
        if where == "verify" and payer is not None:
            self._offer(verify_record, ctx, {"isValid": False, "invalidReason": refusal.reason,
                                             "invalidMessage": refusal.message, "payer": payer})
        return AbortResult(reason=refusal.reason, message=refusal.message)

    def before_verify(self, ctx: Any) -> AbortResult | None:
        return self._refuse(ctx, "verify")

    def before_settle(self, ctx: Any) -> AbortResult | None:
        return self._refuse(ctx, "settle")

    # -- after: the records ----------------------------------------------------------------------
    def after_verify(self, ctx: Any) -> None:
        self._offer(verify_record, ctx, _dump(ctx.result))

    def verify_failure(self, ctx: Any) -> None:
        self._offer(verify_record, ctx, {"isValid": False, "invalidReason": _error_text(ctx.error)})
        return None

    def after_settle(self, ctx: Any) -> None:
        self._offer(settle_record, ctx, _dump(ctx.result))

    def settle_failure(self, ctx: Any) -> None:
        req = _dump(ctx.requirements)
        self._offer(settle_record, ctx, {"success": False, "errorReason": _error_text(ctx.error),
                                         "transaction": "", "network": req.get("network", "")})
        return None


def wire_facilitator(fac: Any, publisher: Any, breaker_view: BreakerView | Gate | None = None, *,
                     name: str = "x402-sdk", fail_mode: FailMode = "open") -> FacilitatorTap:
    """Register the tap's hooks on an `x402Facilitator` / `x402FacilitatorSync`; returns the tap.

    `publisher` needs `offer(record) -> bool` (a TapPublisher); `breaker_view` is a BreakerView (wrapped in
    a Gate with `fail_mode`), a ready Gate, or None (record only, refuse nobody).
    """
    gate = breaker_view if isinstance(breaker_view, Gate) or breaker_view is None else Gate(
        breaker_view, fail_mode=fail_mode, metrics=getattr(publisher, "metrics", None))
    tap = FacilitatorTap(publisher, gate, name=name)
    fac.on_before_verify(tap.before_verify)
    fac.on_before_settle(tap.before_settle)
    fac.on_after_verify(tap.after_verify)
    fac.on_verify_failure(tap.verify_failure)
    fac.on_after_settle(tap.after_settle)
    fac.on_settle_failure(tap.settle_failure)
    return tap


def refused_verify(exc: PaymentAbortedError, payer: str | None = None) -> dict:
    """The /verify answer for a refused payment (HTTP 200, isValid false), as the SDK client expects."""
    out = {"isValid": False, "invalidReason": exc.reason}
    if payer:
        out["payer"] = payer
    return out


def refused_settle(exc: PaymentAbortedError, network: str, payer: str | None = None) -> dict:
    out = {"success": False, "errorReason": exc.reason, "transaction": "", "network": network}
    if payer:
        out["payer"] = payer
    return out
