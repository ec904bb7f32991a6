"""The outbox reader's fold, without a broker: which `delivered` records end a webhook. A webhook the
sender never sent (outcome `disabled`: no webhook.url) stays owed, so a later start with a url re-queues
it; `delivered` and `dead` end it."""

from __future__ import annotations

import time

import pytest

from tests.breaker.conftest import SECRET, wallet
from watcher.breaker import BreakerStage, load_breaker_config
from watcher.breaker.outbox import (BreakerLog, DeliveredRecord, PartitionFold, change_record, decode_record,
                                    encode_record)
from watcher.breaker.state import Breakers
from watcher.breaker.webhook import webhook_body


def held(n: int = 1):
    """A person's hold of one agent: the breakers after it, the effect and its change record."""
    now = int(time.time() * 1000)
    br = Breakers()
    e = br.hold(wallet(n), now, "admin:test", f"cmd-{n}", "test")
    return br, e, change_record(0, e, webhook_body(e), now)


def ended(rec, outcome: str) -> DeliveredRecord:
    return DeliveredRecord(rec.id, rec.partition, rec.agent, outcome, 0 if outcome == "disabled" else 1,
                           int(time.time() * 1000), "no url" if outcome == "disabled" else "HTTP 200")


class FakeSender:
    def __init__(self) -> None:
        self.submitted = []

    def submit(self, d) -> bool:
        self.submitted.append(d)
        return True

    def forget_partition(self, p) -> int:
        return 0


def test_disabled_leaves_the_webhook_pending_until_delivered_or_dead():
    _, _, rec = held()
    fold = PartitionFold()
    for r in (rec, ended(rec, "disabled"), ended(rec, "disabled")):   # two starts without a url
        fold.add(decode_record(encode_record(r)))
    assert set(fold.pending) == {rec.id} and rec.id not in fold.done
    assert fold.pending[rec.id].body == rec.body.encode()
    for final in ("delivered", "dead"):
        f = PartitionFold()
        for r in (rec, ended(rec, "disabled"), ended(rec, final)):
            f.add(r)
        assert f.pending == {} and rec.id in f.done, final


def test_a_record_ended_before_its_change_is_read_stays_ended():
    _, _, rec = held()
    fold = PartitionFold()
    fold.add(ended(rec, "delivered"))
    fold.add(rec)
    assert fold.pending == {}


@pytest.mark.parametrize("outcome, resent", [("disabled", True), ("delivered", False), ("dead", False)])
def test_restore_requeues_a_webhook_a_start_without_url_did_not_send(outcome, resent):
    """The checkpoint taken after the `disabled` outcome no longer holds the webhook (the stage dropped it
    from its outbox); the log still owes it, so the restore of a start with a url submits it again with
    its id and body."""
    br, e, rec = held()
    checkpoint = {"v": 1, "breakers": br.snapshot(), "outbox": []}
    log = BreakerLog("127.0.0.1:1", "brk-unit")   # not entered: only its fold is used
    log.fold(0).add(rec)
    log.fold(0).add(ended(rec, outcome))
    assert log.undelivered() == (1 if resent else 0)
    cfg = load_breaker_config(None, webhook={"url": "http://127.0.0.1:1/hook", "secrets": [SECRET]})
    stage = BreakerStage(cfg)
    sender = FakeSender()
    stage.attach(sender, None, None, log)
    stage.restore(0, checkpoint)
    if resent:
        (d,) = sender.submitted
        assert (d.id, d.type, d.agent, d.body) == (e.id, "freeze", e.agent, rec.body.encode())
        assert stage.undelivered() == 1
    else:
        assert sender.submitted == [] and stage.undelivered() == 0
