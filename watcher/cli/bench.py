"""`spendwatch bench`: throughput and memory, as figures and ratios measured in the same run."""

from __future__ import annotations

import asyncio
import json
import platform

from rich.console import Console
from rich.table import Table


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure throughput and memory", description=(
        "In-process decode->dedupe->windows events/s; the same through the real broker vs plain aiokafka "
        "consumption of the same messages in the same run; bytes per tracked agent at 100,000 and "
        "1,000,000 agents; then the parts: detection cost, /metrics render at 1M agents, payment-to-webhook "
        "latency, facilitator-tap overhead, chain backfill and live latency (the chain part needs Node.js: "
        "it installs the npm packages of tools/npm on first use). Prints a table, or one JSON object with "
        "--json (the README's Performance table names its keys). Uses all the CPU it gets for minutes (--quick: about 65-90 s on "
        "2 cores); figures vary with the machine and its load: compare the ratios. Exit 0 when it ran."),
        epilog="Examples: spendwatch bench --quick --parts core ; spendwatch bench --json > bench.json")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of a table")
    p.add_argument("--quick", action="store_true", help="smaller sizes for a smoke check (about 65-90 s on 2 cores)")
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka to use (default: the embedded Tansu broker)")
    p.add_argument("--parts", default="", metavar="LIST", help="comma-separated parts besides the core figures: "
                   "detect, metrics, breaker, tap, chain, or core for none (default: all)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from watcher.bench import run_all

    parts = {x.strip() for x in args.parts.split(",") if x.strip()} or None
    result = asyncio.run(run_all(quick=args.quick, bootstrap=args.bootstrap, parts=parts))
    result["machine"] = {"cpus": __import__("os").cpu_count(), "python": platform.python_version(),
                         "platform": platform.platform()}
    if args.json:
        print(json.dumps(result, indent=None))
        return 0
    t = Table(title="spendwatch bench")
    t.add_column("figure")
    t.add_column("value", justify="right")
    for k, v in result.items():
        if not isinstance(v, dict):
            t.add_row(k, f"{v:,.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))
    Console().print(t)
    return 0
