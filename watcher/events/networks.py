"""Known payment networks: x402 v1 names and CAIP-2 ids, both mapped to an EVM chain id.

The v1 name table is the x402 SDK's own, so the two stay in step.
"""

from __future__ import annotations

from x402.mechanisms.evm.v1.constants import V1_NETWORK_CHAIN_IDS

from watcher.errors import EventError

V1_NAMES: dict[str, int] = dict(V1_NETWORK_CHAIN_IDS)
CHAIN_NAMES: dict[int, str] = {cid: name for name, cid in V1_NAMES.items()}
KNOWN_CHAIN_IDS: frozenset[int] = frozenset(V1_NAMES.values()) | {31337}


def caip2(chain_id: int) -> str:
    return f"eip155:{chain_id}"


class Networks:
    """Resolves a network string (v1 name or `eip155:<id>`) to its CAIP-2 form and chain id.

    `extra_chain_ids` admits chains the SDK does not list (a private test chain, say).
    """

    def __init__(self, extra_chain_ids: frozenset[int] | set[int] = frozenset()) -> None:
        self.chain_ids = KNOWN_CHAIN_IDS | frozenset(extra_chain_ids)
        self._cache: dict[str, tuple[str, int]] = {}

    def resolve(self, network: str) -> tuple[str, int]:
        hit = self._cache.get(network)
        if hit is not None:
            return hit
        if network.startswith("eip155:"):
            ref = network[7:]
            if not ref.isdigit() or len(ref) > 12:
                raise EventError("unknown_network", f"{network!r} is not eip155:<decimal chain id>")
            cid = int(ref)
        elif network in V1_NAMES:
            cid = V1_NAMES[network]
        else:
            raise EventError("unknown_network", f"{network!r} is neither a known x402 v1 network "
                             "name nor a CAIP-2 eip155 id")
        if cid not in self.chain_ids:
            raise EventError("unknown_network", f"chain id {cid} ({network!r}) is not configured; "
                             "add it to events.extra_chain_ids")
        out = (caip2(cid), cid)
        if len(self._cache) < 4096:
            self._cache[network] = out
        return out
