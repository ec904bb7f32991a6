"""The agent registry: a TOML file of [[agents]] tables (wallet = "0x..", name = ".."), examples/agents.toml.

One file, two readers: the chain bridge watches its wallets (`chain.registry_file`) and the daemon shows its
names in webhooks and the admin API (`agents.registry_file`). Errors name the file, the key and the fix.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from watcher.errors import ConfigError
from watcher.events.addresses import checked_address


def checksum_address(value: object, key: str) -> str:
    """`value` in EIP-55 form; a mixed-case input must carry a valid checksum. Raises ValueError naming `key`
    (settings validators report it; load_registry wraps it in a ConfigError naming the file)."""
    return checked_address(value, key, checksum_fix="; write it all lower case or fix it")


def load_registry(path: Path, *, key: str) -> dict[str, str]:
    """wallet (checksum) -> agent name, from the [[agents]] tables of `path`. `key` is the setting that named
    the file (chain.registry_file, agents.registry_file): a missing file is reported under it."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError("agent registry not found", file=str(path), key=key,
                          fix=f"point {key} at an existing TOML file (a relative path in a config file is "
                          "relative to that file's folder)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"agent registry is not valid TOML ({exc})", file=str(path),
                          fix="correct the TOML syntax at the line and column shown") from None
    agents = data.get("agents", [])
    if not isinstance(agents, list):
        raise ConfigError("`agents` must be an array of tables", file=str(path), key="agents",
                          fix="write each agent as [[agents]] with wallet = '0x...' and name = '...'")
    out: dict[str, str] = {}
    for i, agent in enumerate(agents):
        wallet = agent.get("wallet") if isinstance(agent, dict) else None
        try:
            checksum = checksum_address(wallet, "wallet")
        except ValueError as exc:
            raise ConfigError(str(exc), file=str(path), key=f"agents[{i}].wallet",
                              fix="use the agent's 0x payer address") from None
        out[checksum] = str(agent.get("name", checksum))
    return out
