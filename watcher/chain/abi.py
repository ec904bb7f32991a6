"""Event signatures of the token, and parsing of raw JSON-RPC logs and headers into typed records.

Logs and block headers are taken as the node sends them (JSON with 0x hex strings) and parsed here once,
at the edge, into frozen `Log` / `Header` values. Nothing inward sees a raw dict or a HexBytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_hash.auto import keccak

from watcher.errors import EventError

TRANSFER_TOPIC = "0x" + keccak(b"Transfer(address,address,uint256)").hex()
AUTHORIZATION_USED_TOPIC = "0x" + keccak(b"AuthorizationUsed(address,bytes32)").hex()
WATCHED_TOPICS = (TRANSFER_TOPIC, AUTHORIZATION_USED_TOPIC)


@dataclass(frozen=True, slots=True)
class Log:
    address: str          # lowercase 0x
    topics: tuple[str, ...]  # lowercase 0x, 32 bytes each
    data: str             # lowercase 0x
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int
    removed: bool = False


@dataclass(frozen=True, slots=True)
class Header:
    number: int
    hash: str
    parent_hash: str
    timestamp: int        # seconds since the epoch


def _int(v: object, field: str) -> int:
    """A JSON-RPC quantity; EventError (never ValueError) when it is none, e.g. "0xzz" or "0x"."""
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.startswith("0x"):
        try:
            return int(v, 16)
        except ValueError:
            pass
    raise EventError("bad_schema", f"{field}={str(v)[:80]!r} is not a 0x quantity")


def parse_log(raw: dict) -> Log:
    """One log object of eth_getLogs or a `logs` subscription."""
    try:
        return Log(raw["address"].lower(), tuple(t.lower() for t in raw["topics"]), raw["data"].lower(),
                   _int(raw["blockNumber"], "blockNumber"), raw["blockHash"].lower(),
                   raw["transactionHash"].lower(), _int(raw["logIndex"], "logIndex"), bool(raw.get("removed")))
    except (KeyError, TypeError, AttributeError) as exc:
        raise EventError("bad_schema", f"log without {exc}: {str(raw)[:200]}") from None


def parse_header(raw: dict) -> Header:
    """A block (eth_getBlockByNumber without transactions) or a `newHeads` notification."""
    try:
        return Header(_int(raw["number"], "number"), raw["hash"].lower(), raw["parentHash"].lower(),
                      _int(raw["timestamp"], "timestamp"))
    except (KeyError, TypeError, AttributeError) as exc:
        raise EventError("bad_schema", f"block header without {exc}: {str(raw)[:200]}") from None


def topic_address(topic: str) -> str:
    """The address in an indexed address topic (lowercase 0x)."""
    return "0x" + topic[-40:]


def address_topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:].lower()
