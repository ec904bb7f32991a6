"""`spendwatch check-config FILE`."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("check-config", help="validate a configuration file and print the result",
                       description="Validate FILE (plus SPENDWATCH_* environment overrides) without "
                                   "connecting to anything. Exit 0 if valid, 1 with the file, key and fix if not.")
    p.add_argument("file", help="TOML configuration file")
    p.add_argument("--show", action="store_true", help="print the effective configuration as JSON")
    p.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    from watcher.config import load_settings

    s = load_settings(args.file)
    if args.show:
        print(json.dumps(s.model_dump(mode="json"), indent=2))
    print(f"{args.file}: OK")
    return 0
