"""`spendwatch deadletters`: summarize or list the dead-letter topic, and re-drive dead letters to their source
topic once the cause is fixed. The selection is in watcher.sources.deadletter; this is the Kafka shell."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from watcher.cli.common import add_kafka_options, settings_from
from watcher.errors import ConfigError

log = logging.getLogger("spendwatch.deadletters")

DESCRIPTION = """\
Read the dead-letter topic (kafka.dead_letter_topic, default watcher.deadletter: every input record the daemon
could not use, with the reason, where it was, and its key, bytes and headers) from the beginning to its
current end, and stop. It joins no consumer group and commits nothing, so the daemon is not disturbed.

  (default)   a summary: how many, by reason and by source topic, the oldest and newest, how many are cut
  --list      one line per dead letter, oldest first: when, reason, source topic[partition]@offset, detail
  --redrive   re-publish the dead letters of --reason R to their source topic and partition, with their
              original key and headers, so that after a fix (a raised events.max_event_bytes, an upgrade
              that reads the record) the daemon consumes them again

Re-driving is safe to repeat: the daemon counts a record once by its id (payments and transfers are
remembered per partition for dedupe.horizon_seconds, 26 h of event time by default, which is why a record
goes back to its own partition), and one run re-publishes each source record once even when it was
dead-lettered twice. The dead letters stay on the topic (Kafka does not delete single records); a re-driven
record that fails again is dead-lettered again, at its new offset. A dead letter that holds only the head of
its record (over 700,000 bytes: `rawSize`), of its key (over 4,096 bytes) or of its headers (over 16,384
bytes) is refused: re-publish that record from its source offset, which the refusal names. Dead letters
written before headers were kept are re-driven without headers.

Needs a real Kafka: the embedded broker keeps nothing between runs. Writes only with --redrive (without
--dry-run): to the source topics.
"""

EPILOG = """\
exit status: 0 done (also when no dead letter matches); 1 Kafka cannot be reached, the topic was not read to
its end within --timeout (nothing is printed or re-driven then), or --redrive refused a dead letter that is
cut or could not publish one (the others are re-driven); 2 wrong usage.

examples:
  spendwatch deadletters --bootstrap kafka:9092
  spendwatch deadletters --config spendwatch.toml --json
  spendwatch deadletters --bootstrap kafka:9092 --list --reason too_large --limit 20
  spendwatch deadletters --bootstrap kafka:9092 --redrive --reason too_large --dry-run
  spendwatch deadletters --bootstrap kafka:9092 --redrive --reason too_large
"""


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive count")
    return n


def register(sub) -> None:
    p = sub.add_parser("deadletters", help="summarize, list or re-drive the dead-letter topic",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_kafka_options(p, embedded=False)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="one line per dead letter instead of the summary")
    mode.add_argument("--redrive", action="store_true", help="re-publish the dead letters of --reason R to their "
                      "source topics (needs --reason)")
    p.add_argument("--reason", metavar="R", help="only dead letters with this reason (e.g. too_large, bad_json)")
    p.add_argument("--limit", type=_positive, metavar="N", help="with --list: print at most N (the oldest)")
    p.add_argument("--dry-run", action="store_true", help="with --redrive: say what would be re-published, "
                   "publish nothing")
    p.add_argument("--json", action="store_true", help="the summary as one JSON object; with --list one JSON "
                   "object per line; with --redrive one JSON object with the counts")
    p.add_argument("--topic", help="dead-letter topic (default: kafka.dead_letter_topic of the configuration)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up reading the topic after this long (default 30)")
    p.set_defaults(func=cmd_deadletters, usage_error=p.error)


def cmd_deadletters(args) -> int:
    if args.redrive and not args.reason:
        args.usage_error("--redrive needs --reason R (re-drive one cause at a time, after fixing it)")
    if args.dry_run and not args.redrive:
        args.usage_error("--dry-run goes with --redrive")
    if args.limit and not args.list:
        args.usage_error("--limit goes with --list")
    settings = settings_from(args)
    bootstrap = args.bootstrap or settings.kafka.bootstrap
    if not bootstrap:
        raise ConfigError("no Kafka to read dead letters from", key="kafka.bootstrap",
                          fix="pass --bootstrap HOST:PORT (the embedded broker keeps no dead letters)")
    topic = args.topic or settings.kafka.dead_letter_topic
    return asyncio.run(_run(args, settings, bootstrap, topic))


async def read_dead_letters(bootstrap: str, topic: str, timeout_s: float,
                            whole_reason: str | None = None) -> tuple[list, int]:
    """Every dead letter in `topic` now, and how many of its records are not dead letters. Only those of
    `whole_reason` (the one being re-driven) keep their record, key and headers: a topic of many
    700 KB dead letters is read in the memory of its small fields."""
    import msgspec

    from watcher.sources.deadletter import decode_dead_letter
    from watcher.sources.kafka import read_whole

    unreadable = 0

    def keep(m):
        nonlocal unreadable
        try:
            dl = decode_dead_letter(m.value or b"")
        except msgspec.DecodeError as exc:
            unreadable += 1
            log.warning("%s[%d]@%d is not a dead letter (%s): skipped", m.topic, m.partition, m.offset, exc)
            return None
        if dl.reason != whole_reason:
            dl = msgspec.structs.replace(dl, raw_b64="", key_b64=None, headers=None)
        return dl

    letters = await read_whole(bootstrap, topic, timeout_s=timeout_s, client_id="spendwatch-deadletters",
                               otherwise="nothing was printed or re-driven", keep=keep)
    return letters, unreadable


async def _run(args, settings, bootstrap: str, topic: str) -> int:
    from watcher.sources.deadletter import in_order, list_line, summarize

    letters, unreadable = await read_dead_letters(bootstrap, topic, args.timeout,
                                                  args.reason if args.redrive else None)
    reasons = sorted({d.reason for d in letters})
    if args.reason:
        letters = [d for d in letters if d.reason == args.reason]
        if not letters:
            print(f"no dead letters with reason {args.reason} in {topic} on {bootstrap} (reasons there: "
                  f"{', '.join(reasons) or 'none'})", file=sys.stderr)
    if args.redrive:
        return await _redrive(args, settings, bootstrap, letters)
    if args.list:
        for dl in in_order(letters)[:args.limit]:
            print(json.dumps(_listed(dl)) if args.json else list_line(dl))
        return 0
    summary = summarize(letters, unreadable)
    print(json.dumps({"topic": topic, **summary}) if args.json else _summary_text(topic, summary))
    return 0


def _listed(dl) -> dict:
    return {"deadLetteredAt": dl.deadLetteredAt, "reason": dl.reason, "topic": dl.topic,
            "partition": dl.partition, "offset": dl.offset, "detail": dl.detail, "cut": dl.cut()}


def _summary_text(topic: str, s: dict) -> str:
    lines = [f"{topic}: {s['total']} dead letter{'' if s['total'] == 1 else 's'}"
             + (f", oldest {s['oldest']}, newest {s['newest']}" if s["total"] else "")]
    for title, counts in (("by reason", s["byReason"]), ("by source topic", s["bySourceTopic"])):
        if counts:
            width = max(map(len, counts))
            lines += [f"{title}:"] + [f"  {name:<{width}}  {n}" for name, n in counts.items()]
    if s["cut"]:
        lines.append(f"cut: {s['cut']} (they hold only the head of their record, key or headers: --redrive "
                     "refuses them)")
    if s["unreadable"]:
        lines.append(f"{s['unreadable']} records on the topic are not dead letters (skipped, see the log)")
    return "\n".join(lines)


async def _redrive(args, settings, bootstrap: str, letters: list) -> int:
    from watcher.embedded import with_bootstrap
    from watcher.sources.deadletter import plan_redrive

    plan = plan_redrive(letters)
    for dl in plan.cut:
        print(f"refused: {dl.reason} {dl.where}: its dead letter does not hold the whole {', '.join(dl.cut())}; "
              f"the whole record is at {dl.where}: re-publish it from there", file=sys.stderr)
    if args.dry_run:
        results = [None] * len(plan.send)
    else:
        results = await _publish(with_bootstrap(settings, bootstrap).kafka, plan.send)
    failed = 0
    for dl, res in zip(plan.send, results):
        if isinstance(res, BaseException):
            failed += 1
            print(f"failed: {dl.reason} {dl.where}: {res!r}", file=sys.stderr)
        else:
            print(f"would re-drive {dl.reason} {dl.where}" if res is None else
                  f"re-drove {dl.reason} {dl.where} as {res.topic}[{res.partition}]@{res.offset}")
    done = len(plan.send) - failed
    if args.json:
        print(json.dumps({"reason": args.reason, "dryRun": args.dry_run, "redriven": 0 if args.dry_run else done,
                          "wouldRedrive": done if args.dry_run else 0, "failed": failed,
                          "refusedCut": len(plan.cut), "skippedRepeats": plan.repeats}))
    else:
        print(f"{'would re-drive' if args.dry_run else 're-drove'} {done} dead letter{'' if done == 1 else 's'} "
              f"with reason {args.reason} to their source topics; skipped {len(plan.cut) + plan.repeats + failed}: "
              f"{len(plan.cut)} cut (refused), {plan.repeats} repeated (their record is re-driven once), "
              f"{failed} failed to publish")
    return 1 if plan.cut or failed else 0


async def _publish(k, letters: list) -> list:
    """Re-publish each dead letter's record to its source topic and partition, with its key and headers; per
    dead letter the broker's RecordMetadata, or the exception that stopped it."""
    from aiokafka.errors import KafkaConnectionError

    from watcher.sources.clients import stop_client
    from watcher.sources.kafka import TopicTracker, producer, unreachable

    if not letters:
        return []
    prod = producer(k, client_id=f"{k.client_id}-redrive")
    try:
        await prod.start()
    except KafkaConnectionError as exc:
        await stop_client(prod, "re-drive producer")
        raise unreachable(k.bootstrap, exc) from None
    try:
        track = TopicTracker(prod)
        for topic in {dl.topic for dl in letters}:
            track(topic)
        futs = []
        for dl in letters:
            try:
                futs.append(await prod.send(dl.topic, dl.raw(), key=dl.key(), partition=dl.partition,
                                            headers=dl.source_headers()))
            except Exception as exc:  # noqa: BLE001 - e.g. the partition is gone: say so, go on with the rest
                fut = asyncio.get_running_loop().create_future()
                fut.set_exception(exc)
                futs.append(fut)
        return await asyncio.gather(*futs, return_exceptions=True)
    finally:
        await stop_client(prod, "re-drive producer")
