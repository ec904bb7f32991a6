"""Known payment networks: x402 v1 names and CAIP-2 ids, both mapped to an EVM chain id.

The v1 name table is a copy of the x402 SDK's `x402.mechanisms.evm.v1.constants.V1_NETWORK_CHAIN_IDS`:
importing it pulls in the SDK's signers and web3 (~1 s at every start). tests/unit/test_networks.py keeps
the copy equal to the pinned SDK's table.
"""

from __future__ import annotations

from watcher.errors import EventError

V1_NAMES: dict[str, int] = {
    "base": 8453, "base-sepolia": 84532, "ethereum": 1, "polygon": 137, "polygon-amoy": 80002,
    "avalanche": 43114, "avalanche-fuji": 43113, "abstract": 2741, "abstract-testnet": 11124, "iotex": 4689,
    "sei": 1329, "sei-testnet": 1328, "peaq": 3338, "story": 1513, "educhain": 656476,
    "skale-base-sepolia": 1444673419, "megaeth": 4326, "monad": 143, "monad-testnet": 10143, "stable": 988,
    "stable-testnet": 2201, "celo": 42220, "flare": 14,
}
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
