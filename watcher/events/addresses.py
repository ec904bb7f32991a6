"""EVM address and hash normalisation.

Addresses are returned in EIP-55 checksum form. A mixed-case input must carry a valid checksum; an
all-lower or all-upper one is accepted and checksummed. Results are cached because the same wallets and
merchants recur in every batch (keccak per event would dominate the decode cost).
"""

from __future__ import annotations

import re

from eth_utils import to_checksum_address

from watcher.errors import EventError

try:  # safe-pysha3: keccak in C, ~1 µs a call (eth-utils' pycryptodome backend costs ~15 µs, its checksum ~50)
    from sha3 import keccak_256 as _keccak
except ImportError:  # pragma: no cover - the pinned install has it
    _keccak = None

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}\Z").match
_HASH = re.compile(r"0x[0-9a-fA-F]{64}\Z").match
_CACHE_MAX = 200_000
_LETTERS = bytes.maketrans(b"0123456789abcdef", b"\0" * 10 + b"\x20" * 6)  # 0x20 under a hex letter
_HIGH = bytes.maketrans(b"0123456789abcdef", b"\0" * 8 + b"\x20" * 8)      # 0x20 under a nibble >= 8


def eip55(text: str) -> str:
    """EIP-55 checksum form of a syntactically valid 0x address: a hex letter is upper case where the
    keccak of the lower-case hex has a nibble >= 8 (one subtraction of 0x20 per such byte, as big ints)."""
    if _keccak is None:
        return to_checksum_address(text)
    body = text[2:].lower().encode()
    mask = int.from_bytes(_keccak(body).hexdigest()[:40].encode().translate(_HIGH), "big")
    mask &= int.from_bytes(body.translate(_LETTERS), "big")
    return "0x" + (int.from_bytes(body, "big") - mask).to_bytes(40, "big").decode()


def checked_address(text: object, field: str, *, checksum_fix: str = "") -> str:
    """`text` in EIP-55 form; a mixed-case input must carry a valid checksum. Raises ValueError naming
    `field` (a wrong checksum's message ends with `checksum_fix`); callers turn it into the error their
    readers expect (EventError here, ConfigError or a settings error in watcher.registry)."""
    if not isinstance(text, str) or not _ADDRESS(text):
        shown = text[:60] if isinstance(text, str) else text
        raise ValueError(f"{field}={shown!r} is not a 0x-prefixed 20-byte hex address")
    body = text[2:]
    out = eip55(text)  # one keccak: also the EIP-55 check of a mixed-case input
    if out != text and body != body.lower() and body != body.upper():
        raise ValueError(f"{field}={text!r} has a wrong EIP-55 checksum{checksum_fix}")
    return out


class AddressBook:
    """A bounded cache of validated addresses: input text -> checksum text."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[str, str] = {}

    def checksum(self, text: str, field: str) -> str:
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        try:
            out = checked_address(text, field)
        except ValueError as exc:
            raise EventError("bad_address", str(exc)) from None
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[text] = out
        return out


def tx_hash(text: str, field: str = "transaction") -> str:
    """A 32-byte hash as lowercase 0x hex."""
    if not _HASH(text):
        raise EventError("bad_hash", f"{field}={text[:80]!r} is not a 0x-prefixed 32-byte hex hash")
    return text.lower()


def address_key(checksum_address: str) -> bytes:
    """The 20 raw bytes of an address, used as a compact index key."""
    return bytes.fromhex(checksum_address[2:])


def key_address(key: bytes) -> str:
    return eip55("0x" + key.hex())
