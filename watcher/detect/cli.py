"""`spendwatch replay` and `spendwatch eval`. Wire with `register(subparsers)` from watcher/cli/main.py."""

from __future__ import annotations

import argparse
import json
import sys

from watcher.errors import ConfigError, EventError


def register(subparsers) -> None:
    rp = subparsers.add_parser(
        "replay", help="backtest a policy: run recorded events through the detector offline",
        description="Run the same decode -> shard -> detector pipeline over recorded topic records "
                    "(x402.settle, x402.verify, chain.transfer, chain.progress JSON lines), with time taken from the "
                    "events, and write the decisions as they would be published to watcher.decisions. "
                    "Lines that fail validation are counted by reason and skipped (--strict: stop there). "
                    "A summary (lines, events, rejected by reason, decisions by kind, events/s) goes to stderr, "
                    "or to stdout as JSON with --json. To record the topics into FILE.jsonl, write each "
                    "record's value as one line (e.g. kcat -C -t x402.payments -e -f '%s\\n').",
        epilog="exit status: 0 done; 1 a file cannot be read or written, the policy file is invalid, no\n"
               "line of a non-empty events file is a topic record, or (--strict) a line fails validation;\n"
               "2 wrong usage.\n\nexamples:\n  spendwatch replay --events day.jsonl --policy policy.toml --out "
               "decisions.jsonl\n  spendwatch replay --events day.jsonl --config spendwatch.toml --out decisions.jsonl\n"
               "  spendwatch replay --events day.jsonl --out - --drain-seconds 3600 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("--events", required=True, metavar="FILE.jsonl", help="recorded records, one JSON per line")
    rp.add_argument("--policy", metavar="FILE.toml", help="policy file (default: the --config file's "
                    "detect.policy_file, else the built-in defaults)")
    rp.add_argument("--config", metavar="FILE.toml", help="the deployment's configuration, to decide as its "
                    "`spendwatch run` would: its [[windows]], dedupe horizon, finding delays, [categories] and "
                    "record limits (default: the built-in defaults)")
    rp.add_argument("--out", required=True, metavar="DECISIONS.jsonl", help="where to write decisions ('-' = stdout)")
    rp.add_argument("--drain-seconds", type=_drain_seconds, default=0, metavar="S",
                    help="after the last event, advance event time by S seconds so join deadlines and "
                         "escalation timeouts fire (default 0)")
    rp.add_argument("--strict", action="store_true", help="stop at the first line that fails validation")
    rp.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    rp.set_defaults(func=cmd_replay)

    ev = subparsers.add_parser(
        "eval", help="score detection on seeded scenarios (recall, delay, false alarms)",
        description="Generate a seeded 24 h world (a normal fleet plus runaway loops, slow drains, "
                    "compromised keys, price drift, category budget breaches and new-merchant bursts), "
                    "replay it through the detector and score the decisions against the ground truth. "
                    "Prints a table (or JSON with --json) of recall, detection delay, USDC spent after onset "
                    "and, on the normal fleet, false freezes and false warnings per 1,000 agent-hours, and "
                    "whether each target is met. About 30 s per seed.",
        epilog="exit status: 0 done (a missed target is reported, not an error); 1 the policy file cannot\n"
               "be read or is invalid; 2 wrong usage.\n\nexamples:\n  spendwatch eval\n  spendwatch eval "
               "--seeds 1-10\n  spendwatch eval --policy policy.toml --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    which = ev.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, default=1, help="scenario seed (default 1)")
    which.add_argument("--seeds", type=_seed_range, metavar="FIRST-LAST",
                       help="score every seed in the range (about 30 s each) and report, per target, the "
                            "seeds that missed it and the worst value; with --json one object with `runs`, "
                            "`worst`, `missed` and `all_targets_met`")
    ev.add_argument("--policy", metavar="FILE.toml",
                    help="policy limits to evaluate instead of the built-in eval policy (the scenario's "
                         "rate card is appended)")
    ev.add_argument("--json", action="store_true", help="print one JSON object with a `scenarios` list")
    ev.set_defaults(func=cmd_eval)


def _drain_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    from watcher.detect.policyfile import MAX_SECONDS

    if not 0 <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 to {MAX_SECONDS} (ten years)")
    return value


def _seed_range(text: str) -> list[int]:
    first, sep, last = text.partition("-")
    try:
        seeds = list(range(int(first), int(last if sep else first) + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIRST-LAST, e.g. 1-10") from None
    if not seeds or len(seeds) > 1000:
        raise argparse.ArgumentTypeError(f"{text!r} must name 1 to 1000 seeds, FIRST <= LAST")
    return seeds


def _policy(path: str | None):
    from watcher.detect.policy import Policy

    return Policy.load(path) if path else None


def cmd_replay(args: argparse.Namespace) -> int:
    from watcher.detect.replay import replay_file

    try:
        settings = None
        if args.config:
            from watcher.config import load_settings

            # replay sends nothing and serves nothing: the webhook and admin tables (and their secrets) are moot
            settings = load_settings(args.config, webhook__url="", admin__enabled=False)
        policy = _policy(args.policy or (settings.detect.policy_file if settings else None))
        stats = replay_file(args.events, args.out, policy, drain_ms=int(args.drain_seconds * 1000),
                            strict=args.strict, settings=settings)
    except (ConfigError, EventError) as exc:
        print(f"spendwatch replay: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"spendwatch replay: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    summary = stats.as_dict()
    text = json.dumps(summary) if args.json else (
        f"{summary['lines']} lines, {summary['events']} events in {summary['batches']} batches, "
        f"rejected {summary['rejected'] or 'none'}; decisions {summary['decisions']}; "
        f"{summary['seconds']} s ({summary['events_per_second']} events/s)")
    print(text, file=sys.stdout if args.json else sys.stderr)
    if stats.lines and not stats.events and stats.rejected:
        print(f"spendwatch replay: none of the {stats.lines} lines of {args.events} is a topic record "
              f"(x402.settle, x402.verify, chain.transfer, chain.progress); rejected {stats.rejected}. Is it "
              "the records' values, one JSON object per line?", file=sys.stderr)
        return 1
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from watcher.detect.eval.score import run_eval

    try:
        text = None
        if args.policy:
            _policy(args.policy)
            with open(args.policy, encoding="utf-8") as f:
                text = f.read()
        if args.seeds:
            from watcher.detect.eval.score import run_evals

            result = run_evals(args.seeds, text)
        else:
            result = run_eval(args.seed, text)
    except ConfigError as exc:
        print(f"spendwatch eval: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"spendwatch eval: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
    else:
        print(format_seeds(result) if args.seeds else format_table(result))
    return 0


def _f(v, fmt="{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def format_table(result: dict) -> str:
    head = ("scenario", "recall", "delay s (median)", "USDC after onset (max)", "false freezes",
            "false warn /1000 agent-h", "first rules")
    rows = [head]
    for r in result["scenarios"]:
        rules = r.get("first_rules") or r.get("false_rules") or {}
        rows.append((r["name"], _f(r["recall"]), _f(r["detection_delay_s"], "{:.1f}"),
                     _f(r["usdc_spent_after_onset"], "{:.4f}"), str(r["false_freezes"]),
                     _f(r["false_warnings_per_1000_agent_hours"], "{:.3f}"),
                     ", ".join(f"{k} {v}" for k, v in sorted(rules.items(), key=lambda kv: -kv[1]))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    met = result.get("targets_met", {})
    lines.append("")
    lines.append(f"seed {result.get('seed')}, {result.get('events')} events, decisions {result.get('decisions')}")
    lines.append("targets: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in met.items()))
    return "\n".join(lines)


def format_seeds(result: dict) -> str:
    """One line per seed, then per scenario its worst value over the seeds, then the missed targets."""
    lines = []
    for r in result["runs"]:
        rows = {x["name"]: x for x in r["scenarios"]}
        missed = [k for k, ok in r["targets_met"].items() if not ok]
        lines.append(f"seed {r['seed']}: false freezes {rows['normal_fleet']['false_freezes']}, false warnings "
                     f"{rows['normal_fleet']['false_warnings_per_1000_agent_hours']:.3f}/1000 agent-h, recall "
                     + " ".join(f"{k} {_f(x['recall'])}" for k, x in rows.items() if x["recall"] is not None)
                     + ("; MISSED " + ", ".join(missed) if missed else "; all targets met"))
    lines.append("")
    lines.append(f"worst over seeds {result['seeds'][0]}-{result['seeds'][-1]}:")
    for name, w in result["worst"].items():
        lines.append(f"  {name}: recall {_f(w['recall_min'])}, delay {_f(w['detection_delay_s_max'], '{:.1f}')} s, "
                     f"false freezes {w['false_freezes_max']}, false warnings "
                     f"{w['false_warnings_per_1000_agent_hours_max']:.3f}/1000 agent-h")
    missed = {k: v for k, v in result["missed"].items() if v}
    lines.append("targets: " + ("all met in every seed" if not missed else
                                "; ".join(f"{k} MISSED in seeds {v}" for k, v in missed.items())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (python -m watcher.detect.cli) until watcher/cli/main.py registers these."""
    parser = argparse.ArgumentParser(prog="spendwatch")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
