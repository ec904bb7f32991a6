"""`spendwatch check-config FILE`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("check-config", help="validate a configuration file and print the result",
                       description="Validate FILE (plus SPENDWATCH_* environment overrides) without "
                                   "connecting to anything, as the commands that read it would: the daemon's "
                                   "tables, the /metrics series budget, the policy file and agent registry it "
                                   "names (detect.policy_file, agents.registry_file) and, when FILE has a "
                                   "[chain] table, that table as `spendwatch chain` reads it. Prints "
                                   "'FILE: OK' (with the policy and the number of registered agents). Exit 0 "
                                   "if valid, 1 with the file, the key and the fix if not.",
                       epilog="Example: spendwatch check-config examples/spendwatch.toml --show")
    p.add_argument("file", help="TOML configuration file (e.g. examples/spendwatch.toml, which lists every key)")
    p.add_argument("--show", action="store_true", help="also print the effective configuration (file, "
                   "environment and defaults merged) as JSON; secrets are masked")
    p.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    from watcher.config import load_settings

    s = load_settings(args.file)
    from watcher.cli.common import warn_unknown_env

    warn_unknown_env(list(type(s).model_fields))
    from watcher.metrics import check_series_budget

    check_series_budget(s.metrics, len(s.windows), file=args.file)
    if s.detect.policy_file:
        from watcher.detect.policy import Policy

        Policy.load(s.detect.policy_file).check_windows([w.name for w in s.windows], args.file)
    if "chain" in tomllib.loads(Path(args.file).read_text()):
        from watcher.chain.config import load_settings as load_chain_settings

        load_chain_settings(Path(args.file))
    if args.show:
        print(json.dumps(s.model_dump(mode="json"), indent=2))
    checked = [f"policy {s.detect.policy_file}: OK"] if s.detect.policy_file else []
    if s.agents.registry_file:
        n = len(s.agents.names)
        checked.append(f"agent registry {s.agents.registry_file}: {n} agent{'' if n == 1 else 's'}")
    print(f"{args.file}: OK" + (f" ({'; '.join(checked)})" if checked else ""))
    return 0
