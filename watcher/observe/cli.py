"""`spendwatch statement`: export one UTC day's statements (per agent, merchant, category) as CSV or JSON."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from datetime import date

from watcher.cli.common import add_kafka_options, settings_from
from watcher.errors import ConfigError

FIELDS = ["day", "agent", "merchant", "category", "count", "amount", "amount_usdc", "first_at", "last_at",
          "first_tx", "last_tx", "revision", "final"]


def register(sub) -> None:
    p = sub.add_parser(
        "statement", help="export a UTC day's spend statements (CSV or JSON)",
        description="Read the statements topic (statements.topic, default watcher.statements) from the beginning "
                    "and print, for one UTC day, one row per agent, merchant and category: payment count, sum "
                    "(integer base units, and USDC), first and last transaction, the row's revision and whether "
                    "the day is final (closed statements.close_after_seconds after midnight UTC; rows of an "
                    "open day are provisional and republished every statements.publish_interval_seconds). "
                    "Needs a real Kafka: the embedded broker keeps nothing between runs.",
        epilog="Exit 0 when the topic was read to its end (also when the day has no rows: then only the CSV "
               "header or [] is printed, and a note on stderr); 1 if Kafka cannot be reached or the topic was not "
               "read to its end within --timeout (nothing is printed then). "
               "Example: spendwatch statement --bootstrap localhost:9092 --day 2026-11-23 --format csv > day.csv")
    add_kafka_options(p, embedded=False)
    p.add_argument("--day", required=True, metavar="YYYY-MM-DD", help="the UTC day to export")
    p.add_argument("--format", choices=["csv", "json"], default="csv", help="output format (default csv)")
    p.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")
    p.add_argument("--topic", help="statements topic (default: statements.topic of the configuration)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up reading the topic after this long (default 30)")
    p.set_defaults(func=cmd_statement)


def usdc_text(base_units: int) -> str:
    """Exact decimal USDC text of an integer amount of base units (6 decimals), no float."""
    sign = "-" if base_units < 0 else ""
    q, r = divmod(abs(base_units), 1_000_000)
    return f"{sign}{q}.{r:06d}"


def rows_as_dicts(statements) -> list[dict]:
    out = []
    for s in statements:
        amount = int(s.amount)
        out.append({"day": s.day, "agent": s.agent, "merchant": s.merchant, "category": s.category,
                    "count": s.count, "amount": str(amount), "amount_usdc": usdc_text(amount),
                    "first_at": s.first_at, "last_at": s.last_at, "first_tx": s.first_tx or "",
                    "last_tx": s.last_tx or "", "revision": s.revision, "final": s.final})
    return out


def format_rows(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def cmd_statement(args) -> int:
    from watcher.observe.statements import StatementSettings, read_statements

    try:
        date.fromisoformat(args.day)
    except ValueError:
        raise ConfigError(f"--day {args.day!r} is not a date", fix="give the UTC day as YYYY-MM-DD") from None
    settings = settings_from(args)
    bootstrap = args.bootstrap or settings.kafka.bootstrap
    if not bootstrap:
        raise ConfigError("no Kafka to read statements from", key="kafka.bootstrap",
                          fix="pass --bootstrap HOST:PORT (the embedded broker keeps no statements)")
    ss = getattr(settings, "statements", None) or StatementSettings()
    topic = args.topic or ss.topic
    statements = asyncio.run(read_statements(bootstrap, topic, args.day, timeout_s=args.timeout))
    text = format_rows(rows_as_dicts(statements), args.format)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    if not statements:
        print(f"no statements for {args.day} in {topic} on {bootstrap}: the daemon (`spendwatch run` with "
              f"statements.enabled) publishes each day's rows there every statements.publish_interval_seconds; "
              f"check --bootstrap, --topic and the day (UTC), and that the topic's retention still keeps that day",
              file=sys.stderr)
    return 0
