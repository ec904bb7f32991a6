"""`spendwatch breaker list|show|hold|release|approve|caps`: see and steer the breakers via the admin API."""

from __future__ import annotations

import argparse
import getpass
import json
import os

from pydantic import ValidationError

from watcher.breaker.client import AdminClient
from watcher.breaker.config import BreakerConfig, config_error, load_breaker_config
from watcher.errors import ConfigError
from watcher.money import fmt_usdc, usdc

EPILOG = ("The daemon must run with an admin token (admin.token or SPENDWATCH_ADMIN_TOKEN); give the same token\n"
          "here. A replica answers only for the agents of the partitions it owns (HTTP 409 otherwise): with\n"
          "several replicas, ask each (--url). Exit 0 when the API answered, 1 with the reason if not\n"
          "(unreachable, token refused, bad wallet or window, a partition another replica owns, an approve\n"
          "of an agent the watcher has never seen). `spendwatch breaker ACTION --help` for each.\n\n"
          "Examples:\n  spendwatch breaker list --state open\n"
          "  spendwatch breaker hold 0xAbC... --reason 'looping on a paid search API'\n"
          "  spendwatch breaker release 0xAbC...\n  spendwatch breaker caps 0xAbC... --cap 1m=2 --cap 24h=50")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML configuration file; its [admin] table gives host, port "
                   "and token")
    p.add_argument("--url", help="admin API base URL (default: from [admin], http://127.0.0.1:8742)")
    p.add_argument("--token", help="bearer token (default: SPENDWATCH_ADMIN_TOKEN, then admin.token)")
    p.add_argument("--actor", default=None, help="who acts, recorded in the audit trail (default: $USER)")
    p.add_argument("--json", action="store_true", help="print the API's JSON answer")


def register(sub) -> None:
    p = sub.add_parser("breaker", help="list, hold, release and approve agents (admin API client)",
                       description="Talk to a running daemon's admin API: list agents with their spend and "
                                   "breaker state, hold (freeze) or release an agent, approve an escalation, "
                                   "change an agent's caps. Every change is on the watcher.breaker topic and "
                                   "reaches the wallet service as a signed webhook.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    bsub = p.add_subparsers(dest="breaker_command", metavar="ACTION", required=True)
    ls = bsub.add_parser("list", help="agents: open/held/half-open breakers first, then top spenders",
                         description="List agents: those whose breaker is not closed first, then the top spenders; "
                                     "one line each with wallet, name, breaker state, trips and spend per window "
                                     "(USDC). Example: spendwatch breaker list --state open")
    _common(ls)
    ls.add_argument("--state", choices=["closed", "open", "half_open", "held"], help="only this state")
    ls.add_argument("--limit", type=int, default=50, help="at most this many agents (default 50)")
    show = bsub.add_parser("show", help="one agent", description="One agent's breaker state, trips and spend per "
                           "window; --json prints the whole answer (partition, payments per window, cause, caps, "
                           "escalation, pending webhooks, times). Example: spendwatch breaker show 0xAbC... --json")
    _common(show)
    show.add_argument("agent", help="wallet address 0x...")
    for action, text in (("hold", "freeze the agent until a person releases it (freeze webhook)"),
                         ("release", "let the agent go: open/held -> half-open probation; half-open -> closed"),
                         ("approve", "approve the agent's pending escalation (none: unchanged; an agent the "
                          "watcher has never seen: exit 1, unknown agent)")):
        a = bsub.add_parser(action, help=text, description=f"{text[0].upper()}{text[1:]}. Example: spendwatch "
                            f"breaker {action} 0xAbC... --reason '...'")
        _common(a)
        a.add_argument("agent", help="wallet address 0x...")
        a.add_argument("--reason", default="", help="why (kept in the audit trail and sent in the webhook)")
    c = bsub.add_parser("caps", help="set or clear an agent's caps (USDC per window)",
                        description="Set caps for one agent, in USDC per window (1m, 1h or 24h: the windows "
                                    "detection holds caps for), over the policy's; or --clear the caps a person "
                                    "set. Example: "
                                    "spendwatch breaker caps 0xAbC... --cap 1m=2 --cap 24h=50 --reason 'new budget'")
    _common(c)
    c.add_argument("agent", help="wallet address 0x...")
    c.add_argument("--cap", action="append", default=[], metavar="WINDOW=USDC",
                   help="a cap per window (1m, 1h, 24h), in USDC (e.g. 1m=2 or 24h=50.5); repeat for several")
    c.add_argument("--clear", action="store_true", help="remove caps set by a person")
    c.add_argument("--reason", default="", help="why (kept in the audit trail)")
    p.set_defaults(func=cmd_breaker)


def _client(args) -> AdminClient:
    cfg = load_breaker_config(args.config)
    token = args.token or os.environ.get("SPENDWATCH_ADMIN_TOKEN") or (
        cfg.admin.token.get_secret_value() if cfg.admin.token else None)
    if not token:
        raise ConfigError("no admin token", key="admin.token",
                          fix="set SPENDWATCH_ADMIN_TOKEN or pass --token (the daemon's admin.token)")
    actor = args.actor or os.environ.get("USER") or getpass.getuser()
    return AdminClient(args.url or cfg.admin.base_url(), token, actor=actor)


def _parse_caps(items: list[str]) -> dict[str, int]:
    caps = {}
    for item in items:
        window, sep, amount = item.partition("=")
        try:
            if not sep or not window:
                raise ValueError
            caps[window] = usdc(amount)
        except Exception:
            raise ConfigError(f"bad --cap {item!r}", fix="write WINDOW=USDC, e.g. --cap 1m=2 --cap 24h=50") from None
        if caps[window] < 0:
            raise ConfigError(f"bad --cap {item!r}: negative", fix="caps are >= 0")
    return caps


def _line(row: dict) -> str:
    b = row["breaker"]
    spend = "  ".join(f"{w} {fmt_usdc(v)}" for w, v in row.get("spend", {}).items())
    extra = f"  escalation {b['escalation']}" if b.get("escalation") else ""
    name = f" ({row['name']})" if row.get("name") else ""
    return f"{row['agent']}{name}  {b['state']:<9}  trips {b.get('trips', 0)}  {spend}{extra}"


def cmd_breaker(args) -> int:
    with _client(args) as api:
        cmd = args.breaker_command
        if cmd == "list":
            out = api.agents(state=args.state, limit=args.limit)
            if args.json:
                print(json.dumps(out, indent=2))
            else:
                print(f"{len(out['agents'])} agents (spend in USDC per window: {', '.join(out['windows'])})")
                for row in out["agents"]:
                    print(_line(row))
            return 0
        if cmd == "show":
            out = api.agent(args.agent)
            print(json.dumps(out, indent=2) if args.json else _line(out))
            return 0
        if cmd == "caps":
            if args.clear == bool(args.cap):
                raise ConfigError("give --cap WINDOW=USDC (one or more) or --clear", fix="see --help")
            out = api.set_caps(args.agent, None if args.clear else _parse_caps(args.cap), args.reason)
        else:
            out = api.act(cmd, args.agent, args.reason)
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            idle = "no escalation waits for approval" if cmd == "approve" else "nothing to do"
            state = "changed" if out["changed"] else f"unchanged ({idle})"
            print(f"{cmd} {out['agent']}: {state}; breaker now {out['breaker']['state']}")
        return 0


# -- for `spendwatch run` / `spendwatch demo` ------------------------------------------------------
def add_webhook_options(p: argparse.ArgumentParser) -> None:
    """--webhook-url and --admin-port (the secret comes from SPENDWATCH_WEBHOOK_SECRET or [webhook])."""
    p.add_argument("--webhook-url", metavar="URL", help="POST signed freeze/unfreeze/escalate webhooks here "
                   "(overrides webhook.url; the secret: SPENDWATCH_WEBHOOK_SECRET)")
    p.add_argument("--admin-port", type=int, metavar="PORT", help="admin API port (overrides admin.port; "
                   "token: SPENDWATCH_ADMIN_TOKEN)")


def breaker_config_from(args: argparse.Namespace, settings=None):
    """The BreakerConfig of a command: Settings' tables when it embeds them, else the --config file's,
    with --webhook-url / --admin-port applied and everything validated again."""
    if settings is not None and hasattr(settings, "webhook"):
        data = BreakerConfig.from_settings(settings).model_dump()
    else:
        data = load_breaker_config(getattr(args, "config", None)).model_dump()
    given = []
    if getattr(args, "webhook_url", None):
        data["webhook"]["url"] = args.webhook_url
        given.append("--webhook-url")
    if getattr(args, "admin_port", None) is not None:
        data["admin"]["port"] = args.admin_port
        given.append("--admin-port")
    data["webhook"]["secrets"] = [s.get_secret_value() for s in data["webhook"]["secrets"]]
    try:
        return BreakerConfig(**data)
    except ValidationError as exc:
        raise config_error(exc, getattr(args, "config", None),
                           origin=f"with {' and '.join(given)}" if given else "") from None
