"""Each rule with plain values, through the real decode -> shard -> detector path."""

import pytest

from tests.detect.conftest import AGENT, MERCHANT, T0

U = 1_000_000
CAPS = "[defaults.caps]\nper_minute_usdc = 1\n[defaults.anomaly]\nenabled = false\nfleet = false\n"


def test_cap_freezes_at_the_crossing_payment(harness):
    h = harness(CAPS)
    recs = [h.settle(T0 + i * 1000, 300_000) for i in range(6)]
    ds = h.feed(recs)
    assert [(d.kind, d.rule) for d in ds] == [("freeze", "cap_1m")]
    d = ds[0]
    assert d.event_ids == ["e4"] and d.observed == 1_200_000 and d.threshold == U and d.window == "1m"
    assert d.occurred_at == "2026-11-22T00:00:03.000Z" and d.unit == "usdc_base_units"
    assert h.feed([h.settle(T0 + 7000, 300_000)]) == []          # frozen: nothing more is said
    assert h.detector.release(AGENT)
    assert [d.rule for d in h.feed([h.settle(T0 + 8000, 1)])] == ["cap_1m"]   # still over the cap


def test_cap_across_batches_and_window_expiry(harness):
    h = harness(CAPS)
    for i in range(3):
        assert h.feed([h.settle(T0 + i * 1000, 300_000)]) == []
    assert h.feed([h.settle(T0 + 70_000, 300_000)]) == []       # the first three left the window
    ds = h.feed([h.settle(T0 + 71_000, 300_000), h.settle(T0 + 72_000, 300_000), h.settle(T0 + 73_000, 300_000)])
    assert [(d.rule, d.event_ids) for d in ds] == [("cap_1m", ["e7"])]


def test_ceiling_and_escalation_timeout_and_approval(harness):
    text = CAPS.replace("per_minute_usdc = 1", "per_minute_usdc = 0") + \
        "[defaults.escalation]\npayment_above_usdc = 1\ntimeout_seconds = 60\n"
    h = harness(text)
    ds = h.feed([h.settle(T0, 2 * U)])
    assert [(d.kind, d.rule, d.observed, d.threshold) for d in ds] == [("escalate", "escalate_payment", 2 * U, U)]
    assert h.feed([h.settle(T0 + 1000, 3 * U)]) == []           # one question at a time
    ds = h.feed([h.settle(T0 + 61_000, 1)])
    assert [(d.kind, d.rule, d.event_ids) for d in ds] == [("freeze", "escalation_timeout", [h.decisions[0].id])]
    h2 = harness(text)
    h2.feed([h2.settle(T0, 2 * U)])
    assert h2.detector.approve(AGENT, T0 + 5000)
    assert h2.feed([h2.settle(T0 + 61_000, 2 * U)]) == []        # approved: no timeout, no new question


def test_payment_ceiling_freezes(harness):
    h = harness("[defaults]\nper_payment_max_usdc = 5\n[defaults.anomaly]\nenabled = false\n")
    ds = h.feed([h.settle(T0, 4 * U), h.settle(T0 + 1, 6 * U)])
    assert [(d.kind, d.rule, d.event_ids) for d in ds] == [("freeze", "payment_ceiling", ["e2"])]


def test_category_budget_from_rate_card(harness):
    h = harness('[defaults]\ncategory_budgets_usdc = { gpu = 1 }\n[defaults.anomaly]\nenabled = false\n'
                '[[rate_card]]\nmerchant = "https://gpu.example/*"\ncategory = "gpu"\n')
    recs = [h.settle(T0 + i * 30_000, 400_000, resource="https://gpu.example/run") for i in range(3)]
    recs.append(h.settle(T0 + 100_000, 400_000, resource="https://other.example/x"))
    ds = h.feed(recs)
    assert [(d.kind, d.rule, d.category, d.observed, d.event_ids) for d in ds] == \
        [("escalate", "category_budget", "gpu", 1_200_000, ["e3"])]


def test_blocked_merchant_and_category(harness):
    bad = "0x" + "33" * 20
    h = harness(f'[defaults.merchants]\nblock = ["{bad}"]\nblock_categories = ["casino"]\n'
                '[[rate_card]]\nmerchant = "https://casino.example/*"\ncategory = "casino"\n')
    assert [d.rule for d in h.feed([h.settle(T0, 10, merchant=bad)])] == ["blocked_merchant"]
    h = harness('[defaults.merchants]\nblock_categories = ["casino"]\n'
                '[[rate_card]]\nmerchant = "https://casino.example/*"\ncategory = "casino"\n')
    assert [d.rule for d in h.feed([h.settle(T0, 10, resource="https://casino.example/spin")])] == ["blocked_category"]


def test_allow_list(harness):
    h = harness('[defaults.merchants]\nallow = ["https://ok.example/*"]\n')
    assert h.feed([h.settle(T0, 10, resource="https://ok.example/a")]) == []
    ds = h.feed([h.settle(T0 + 1, 10, resource="https://else.example/a")])
    assert [(d.kind, d.rule) for d in ds] == [("escalate", "merchant_not_allowed")]


def test_price_drift(harness):
    h = harness(f'[[rate_card]]\nmerchant = "{MERCHANT}"\ncategory = "data"\nprice_usdc = 0.01\n'
                'version = "v7"\ntolerance_pct = 5\n')
    assert h.feed([h.settle(T0, 10_400)]) == []                   # within 5 %
    ds = h.feed([h.settle(T0 + 1000, 12_000)])
    assert [(d.kind, d.rule, d.observed, d.threshold, d.merchant) for d in ds] == \
        [("warn", "price_drift", 12_000, 10_000, MERCHANT)]
    assert "v7" in ds[0].reason
    assert h.feed([h.settle(T0 + 2000, 12_000)]) == []            # cooldown
    # after the cooldown the warning repeats with its own id: a consumer that drops repeated ids (the
    # decision topic is at-least-once) must not drop it as a redelivery of the first
    again = h.feed([h.settle(T0 + 3_700_000, 12_000)])
    assert [d.rule for d in again] == ["price_drift"] and again[0].id != ds[0].id


def test_compromised_key_unknown_payee_then_shadow_spend(harness):
    h = harness("[defaults.anomaly]\nenabled = false\n")
    thief = "0x" + "66" * 20
    h.feed([h.settle(T0, 10)])                                     # a normal payment: merchant known
    ds = h.feed([h.transfer(T0 + 5000, 1 * U, to=thief)])
    assert [(d.kind, d.rule, d.merchant) for d in ds] == [("warn", "unknown_payee", thief)]
    # past the shadow grace (and past the first settle's unsettled deadline: the join sweeps its
    # deadlines in arrival order, so the later shadow deadline waits behind the earlier settle's)
    ds = h.feed([h.settle(T0 + 400_000, 10)])
    assert sorted((d.kind, d.rule) for d in ds) == [("freeze", "finding.shadow_spend"), ("warn", "finding.unsettled")] \
        or [(d.kind, d.rule) for d in ds] == [("freeze", "finding.shadow_spend")]
    assert h.feed([h.transfer(T0 + 201_000, 1 * U, to=MERCHANT)]) == []   # a settled merchant: fine


def test_failed_verification_burst(harness):
    h = harness("[defaults.findings]\nfailed_verifications = 5\nfailed_verifications_window_seconds = 10\n")
    assert h.feed([h.failed_verify(T0 + i * 3000) for i in range(5)]) == []    # 5 over 12 s: never 5 in 10 s
    ds = h.feed([h.failed_verify(T0 + 20_000 + i * 100) for i in range(5)])
    assert [(d.kind, d.rule, d.observed, d.threshold) for d in ds] == [("warn", "failed_verifications", 5, 5)]


def test_new_merchant_burst_after_warmup(harness):
    h = harness("[defaults.anomaly]\nwarmup_payments = 5\nwarmup_seconds = 60\nnew_merchants = 4\nfleet = false\n")
    h.feed([h.settle(T0 + i * 20_000, 1000) for i in range(10)])
    burst = [h.settle(T0 + 900_000 + i * 1000, 1000, merchant="0x" + f"{0x40 + i:02x}" * 20) for i in range(5)]
    ds = h.feed(burst)
    assert [(d.rule, d.observed, d.event_ids) for d in ds] == [("new_merchant_burst", 4, ["e11", "e12", "e13", "e14"])]


def test_slow_drain_warns_from_baseline(harness):
    h = harness("[defaults.anomaly]\nfleet = false\n")
    t = T0
    for k in range(8 * 60):                                        # 8 h at ~$0.002/min
        h.feed([h.settle(t, 2000)])
        t += 60_000
    assert h.decisions == []
    for k in range(40 * 6):                                        # drain: $0.3/min, under the $2 cap
        h.feed([h.settle(t, 50_000)])
        t += 10_000
    rules = [(d.kind, d.rule) for d in h.decisions]
    assert rules and rules[0] == ("warn", "baseline.spend_rate")


def test_same_events_same_ids(harness):
    def run():
        h = harness(CAPS)
        h.feed([h.settle(T0 + i * 1000, 300_000) for i in range(6)])
        return [d.id for d in h.decisions]
    a, b = run(), run()
    assert a == b and len(a) == 1 and a[0].startswith("d-")


def test_fleet_model_warns_only_with_the_spend_rate_floor(harness):
    """A fleet-model flag, even corroborated by the spend-rate z, is said only when the agent spent at least
    min_spend_usdc in ~30 min: no person is asked about cents. The model is forced to flag every agent it
    scores and the z-score to be high, so only the spend floor decides."""
    text = ("[defaults.anomaly]\nwarmup_payments = 1\nwarmup_seconds = 0\nspend_rate_ratio = 1000\n"
            "payment_size_z = 1000\nmin_spend_usdc = 1\nfleet_corroborate_z = 3\n")
    small, big = "0x" + "33" * 20, "0x" + "44" * 20

    def forced(h):
        real_features, real_score = h.detector.base.features, h.detector.fleet.score
        h.detector.fleet.scored = 10**6  # past the model's own warm-up

        def features(rows, now):
            feats, z, spent = real_features(rows, now)
            return feats, z * 0 + 5.0, spent

        def score(rows, feats, now):
            scores, _ = real_score(rows, feats, now)
            return scores, scores == scores

        h.detector.base.features, h.detector.fleet.score = features, score
        return h

    h = forced(harness(text))
    cheap = [h.settle(T0 + i * 1000, 100_000, agent=small) for i in range(9)]         # 0.9 USDC
    assert [d.rule for d in h.feed(cheap)] == []
    h = forced(harness(text))
    dear = [h.settle(T0 + i * 1000, 200_000, agent=big) for i in range(9)]           # 1.8 USDC
    ds = h.feed(dear)
    assert [(d.kind, d.rule, d.unit) for d in ds] == [("warn", "fleet.hst", "score")]
    assert "USDC in ~30 min" in ds[0].reason


def test_zero_value_payments_are_scored_not_fatal(harness):
    """Anyone can send a 0 USDC transfer from a watched wallet (address poisoning), and a 0 settle is valid:
    the baselines must take them (log of a zero rate ratio once stopped the daemon) and stay finite."""
    import numpy as np

    h = harness("[defaults.anomaly]\nwarmup_payments = 1\nwarmup_seconds = 0\n")
    assert h.feed([h.settle(T0, 0)]) == []
    assert h.feed([h.transfer(T0 + 1000, 0)]) == []
    h.feed([h.settle(T0 + 2000 + i * 1000, 0) for i in range(40)])   # the vector path, many rows at once
    h.feed([h.settle(T0 + 60_000, 1_000)])
    assert np.isfinite(h.detector.base.state[: len(h.detector.index)]).all()


def test_zero_value_transfer_from_an_agent_is_not_spend(harness):
    """Address poisoning: anyone can make USDC emit Transfer(agent -> fresh address, 0) (transferFrom of 0
    needs no allowance). It moves nothing, so it must not freeze the agent as shadow spend or warn about an
    unknown payee; a real transfer to the same address still does."""
    h = harness("[defaults.anomaly]\nenabled = false\n")
    stranger = "0x" + "77" * 20
    h.feed([h.settle(T0, 10)])
    assert h.feed([h.transfer(T0 + 5000, 0, to=stranger)]) == []
    assert h.feed([h.settle(T0 + 400_000, 10)]) == []                # past the shadow grace: nothing
    assert h.shard.stats.signals >= 1 and h.shard.agent_totals(AGENT)[1][-1] == 2   # 2 settles, no transfer
    ds = h.feed([h.transfer(T0 + 401_000, 1 * U, to=stranger)])
    assert [(d.kind, d.rule) for d in ds] == [("warn", "unknown_payee")]


def test_lists_match_any_letter_case_and_ignore_the_query_string(harness):
    """A block list entry written in lower case, or a URL entry without the query string the agent sends,
    once let the payment through with no decision at all."""
    payee = "0xAb5801a7D398351b8bE11C439e05C5B3259aeC9B"
    h = harness(f'[defaults.merchants]\nblock = ["{payee.lower()}", "https://bad.example/x"]\n')
    assert [d.rule for d in h.feed([h.settle(T0, 10, merchant=payee)])] == ["blocked_merchant"]
    h = harness('[defaults.merchants]\nblock = ["https://bad.example/x"]\n')
    assert [d.rule for d in h.feed([h.settle(T0, 10, resource="https://bad.example/x?q=1")])] == ["blocked_merchant"]


def test_escalation_window_of_an_agent_override(harness):
    """An agent's own escalation window was ignored: the default's (24h) was summed against the agent's
    threshold, and the evidence named the wrong window."""
    h = harness("[defaults.anomaly]\nenabled = false\n[defaults.escalation]\nwindow = \"24h\"\n"
                f"window_above_usdc = 100\n[agents.\"{AGENT}\".escalation]\nwindow = \"1m\"\nwindow_above_usdc = 2\n")
    assert h.feed([h.settle(T0 + i * 300_000, 1 * U) for i in range(4)]) == []     # 1 USDC per 5 min: never 2 in 1m
    ds = h.feed([h.settle(T0 + 1_300_000 + i * 1000, 1 * U) for i in range(3)])
    assert [(d.kind, d.rule, d.window, d.observed, d.event_ids) for d in ds] == \
        [("escalate", "escalate_window", "1m", 3 * U, ["e7"])]


def test_failed_reasons_of_an_agent_override(harness):
    h = harness("[defaults.findings]\nfailed_verifications = 3\n"
                f"[agents.\"{AGENT}\".findings]\nfailed_reasons = [\"invalid_signature\"]\n")
    ds = h.feed([h.failed_verify(T0 + i * 1000, reason="invalid_signature") for i in range(3)])
    assert [(d.rule, d.observed) for d in ds] == [("failed_verifications", 3)]
    other = "0x" + "55" * 20
    assert h.feed([h.failed_verify(T0 + 5000 + i, agent=other, reason="invalid_signature") for i in range(3)]) == []


def test_a_rule_whose_window_is_not_configured_does_not_stop_the_batch(caplog):
    """The configuration's [[windows]] may leave out 24h or 1h: a category budget then raised StopIteration
    out of the detector (the daemon stopped), and a cap on a missing window was skipped without a word."""
    from watcher.detect import Policy
    from watcher.detect.replay import Replay
    from watcher.pipeline.shard import ShardConfig
    from watcher.pipeline.windows import WindowSpec
    from tests.detect.conftest import Harness

    h = Harness()
    policy = Policy.from_text('[defaults]\ncategory_budgets_usdc = { gpu = 1 }\n[defaults.caps]\nper_day_usdc = 1\n'
                              'per_minute_usdc = 1\n[[rate_card]]\nmerchant = "https://g.example/*"\n'
                              'category = "gpu"\n')
    rp = Replay(policy, shard_config=ShardConfig(windows=(WindowSpec("1m", 60, 6), WindowSpec("1h", 3600, 6))))
    ds = list(rp.run([h.settle(T0, 2 * U, resource="https://g.example/run")]))
    assert [(d.rule, d.window) for d in ds] == [("cap_1m", "1m")]
    text = caplog.text
    assert "category_budget" in text and "cap_24h" in text and "'24h'" in text and "[[windows]]" in text


def test_a_payee_reported_by_a_settle_that_follows_its_transfer_is_learnt(harness):
    """The bridge may publish a payment's transfer before the facilitator's settle arrives. That settle makes
    no new spend (the transfer counted it), and its payee was never learnt: every later payment to it, a
    merchant facilitators report all along, warned `unknown_payee` again (once per cooldown)."""
    from watcher.simulate.records import encode, fake_hash, settle_record, transfer_record

    h = harness("[defaults.anomaly]\nenabled = false\n")
    payee = "0x" + "57" * 20
    rules = []
    for k in range(3):
        t, tx = T0 + k * 7_200_000, fake_hash("paired", k)     # 2 h apart: past the warning cooldown
        ds = h.feed([encode(transfer_record(ts_ms=t, payer=AGENT, to=payee, amount=U, tx=tx, status="confirmed",
                                            authorizer=AGENT))])
        ds += h.feed([encode(settle_record(event_id=f"s{k}", ts_ms=t + 1000, payer=AGENT, pay_to=payee, amount=U,
                                           tx=tx))])
        rules.append([d.rule for d in ds])
    assert rules == [["unknown_payee"], [], []]


def test_a_payee_a_facilitator_verified_a_payment_to_is_known_before_its_transfer(harness):
    """A brand-new merchant: the facilitator verifies the payment, the chain bridge publishes its transfer
    before the facilitator's settle record arrives. The payee was learnt from settles only, so that first
    transfer warned `unknown_payee` about a merchant the facilitator had named seconds earlier. Stream order
    decides, so where batches are cut does not: a verification after the transfer still leaves it unknown."""
    from watcher.simulate.records import encode, fake_hash, settle_record, transfer_record, verify_record

    def payment(h, k, payee, verified_first):
        t, tx = T0 + k * 7_200_000, fake_hash("verified", k)
        verify = encode(verify_record(event_id=f"v{k}", ts_ms=t - 2000, payer=AGENT, pay_to=payee, amount=U))
        transfer = encode(transfer_record(ts_ms=t, payer=AGENT, to=payee, amount=U, tx=tx, status="confirmed",
                                          authorizer=AGENT))
        settle = encode(settle_record(event_id=f"s{k}", ts_ms=t + 1000, payer=AGENT, pay_to=payee, amount=U, tx=tx))
        return [verify, transfer, settle] if verified_first else [transfer, verify, settle]

    for cut in (False, True):                          # one batch, or one record per batch
        h = harness("[defaults.anomaly]\nenabled = false\n")
        for k, (payee, first) in enumerate((("0x" + "58" * 20, True), ("0x" + "59" * 20, False))):
            recs = payment(h, k, payee, first)
            ds = [d for r in recs for d in h.feed([r])] if cut else h.feed(recs)
            assert [d.rule for d in ds] == ([] if first else ["unknown_payee"]), (cut, payee)
        assert h.feed([encode(transfer_record(ts_ms=T0 + 30_000_000, payer=AGENT, to="0x" + "59" * 20, amount=U,
                                              tx=fake_hash("later"), status="confirmed"))]) == []   # learnt now


# -- a settle after its payment's transfer: judged with the settle's merchant, resource and category ------------
NO_MODELS = "[defaults.anomaly]\nenabled = false\n"


def _known_payee(h):
    """A facilitator accepted a payment to MERCHANT before: its transfers are no `unknown_payee`."""
    from watcher.simulate.records import encode, verify_record

    assert h.feed([encode(verify_record(event_id="v0", ts_ms=T0 - 60_000, payer=AGENT, pay_to=MERCHANT,
                                        amount=1))]) == []
    return h


def _transfer_then_settle(k, amount, resource, ts=T0, payee=MERCHANT):
    """The bridge publishes a transfer `pending` at the chain head: it often comes before the settle."""
    from watcher.simulate.records import encode, fake_hash, settle_record, transfer_record

    tx = fake_hash("first", k)
    return [encode(transfer_record(ts_ms=ts, payer=AGENT, to=payee, amount=amount, tx=tx, status="pending",
                                   authorizer=AGENT)),
            encode(settle_record(event_id=f"s{k}", ts_ms=ts + 1000, payer=AGENT, pay_to=payee, amount=amount, tx=tx,
                                 resource=resource))]


@pytest.mark.parametrize("cut", [False, True])
def test_category_budget_counts_a_payment_whose_transfer_came_first(harness, cut):
    h = _known_payee(harness('[defaults]\ncategory_budgets_usdc = { gpu = 1 }\n' + NO_MODELS +
                             '[[rate_card]]\nmerchant = "https://gpu.example/*"\ncategory = "gpu"\n'))
    recs = [r for k in range(3) for r in _transfer_then_settle(k, 400_000, "https://gpu.example/run", T0 + k * 30_000)]
    ds = [d for r in recs for d in h.feed([r])] if cut else h.feed(recs)
    assert [(d.kind, d.rule, d.category, d.observed, d.event_ids) for d in ds] == \
        [("escalate", "category_budget", "gpu", 1_200_000, ["s2"])]
    assert h.shard.agent_totals(AGENT)[0][-1] == 1_200_000     # counted once


def test_a_blocked_resource_is_frozen_when_its_transfer_came_first(harness):
    h = _known_payee(harness('[defaults.merchants]\nblock = ["https://casino.example/*"]\n' + NO_MODELS))
    ds = h.feed(_transfer_then_settle(1, 10, "https://casino.example/spin"))
    assert [(d.kind, d.rule, d.event_ids) for d in ds] == [("freeze", "blocked_merchant", ["s1"])]


def test_a_blocked_category_of_a_resource_is_frozen_when_its_transfer_came_first(harness):
    h = _known_payee(harness('[defaults.merchants]\nblock_categories = ["casino"]\n' + NO_MODELS +
                             '[[rate_card]]\nmerchant = "https://casino.example/*"\ncategory = "casino"\n'))
    ds = h.feed(_transfer_then_settle(1, 10, "https://casino.example/spin"))
    assert [(d.kind, d.rule, d.category) for d in ds] == [("freeze", "blocked_category", "casino")]


def test_an_allow_list_of_resources_judges_the_settle_not_its_transfer(harness):
    h = _known_payee(harness('[defaults.merchants]\nallow = ["https://ok.example/*"]\n' + NO_MODELS))
    assert h.feed(_transfer_then_settle(1, 10, "https://ok.example/a")) == []
    ds = h.feed(_transfer_then_settle(2, 10, "https://else.example/a", T0 + 1000))
    assert [(d.kind, d.rule, d.event_ids) for d in ds] == [("escalate", "merchant_not_allowed", ["s2"])]
    # an allow-list of addresses only: a transfer to another address is not allowed, settle or not
    other = "0x" + "44" * 20
    h = _known_payee(harness(f'[defaults.merchants]\nallow = ["{MERCHANT}"]\n' + NO_MODELS))
    ds = h.feed(_transfer_then_settle(3, 10, "https://ok.example/a", payee=other)[:1])
    assert ("merchant_not_allowed", other) in [(d.rule, d.merchant) for d in ds]


def test_price_drift_of_a_resource_card_when_its_transfer_came_first(harness):
    h = _known_payee(harness('[[rate_card]]\nmerchant = "https://api.example/v1/*"\ncategory = "data"\n'
                             'price_usdc = 0.01\nversion = "v7"\n' + NO_MODELS))
    assert h.feed(_transfer_then_settle(1, 10_000, "https://api.example/v1/q")) == []
    ds = h.feed(_transfer_then_settle(2, 12_000, "https://api.example/v1/q", T0 + 1000))
    assert [(d.kind, d.rule, d.observed, d.event_ids, d.category) for d in ds] == \
        [("warn", "price_drift", 12_000, ["s2"], "data")]


def test_a_card_of_the_payee_address_judges_the_transfer_once(harness):
    """The card entry the transfer already matched (its payTo address) is not judged again at the settle."""
    h = _known_payee(harness(f'[[rate_card]]\nmerchant = "{MERCHANT}"\ncategory = "data"\nprice_usdc = 0.01\n'
                             'version = "v7"\n[defaults]\nwarn_cooldown_seconds = 0\n' + NO_MODELS))
    ds = h.feed(_transfer_then_settle(1, 12_000, "https://api.example/v1/q"))
    assert [d.rule for d in ds] == ["price_drift"] and ds[0].event_ids != ["s1"]    # the transfer's
