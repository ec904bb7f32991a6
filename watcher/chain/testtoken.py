"""The test USDC (tests/contracts/TestUSDC.sol) on a dev node: deploy, mint, and EIP-3009 payments.

Agents sign `TransferWithAuthorization` (EIP-712, domain "USD Coin" / "2") with their own keys; a
separate facilitator account (an unlocked anvil account, so the node signs its transactions) submits
`transferWithAuthorization(from, to, value, validAfter, validBefore, nonce, v, r, s)`, exactly as an
x402 facilitator does. Used by the chain tests and the chain benchmark; never by the daemon.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_hash.auto import keccak
from eth_keys import keys

from watcher.chain.solc import REPO_ROOT, ToolError, compile_contract

SOURCE = REPO_ROOT / "tests" / "contracts" / "TestUSDC.sol"
DEPLOYER = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"   # anvil account 0
FACILITATOR = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # anvil account 1 (submits authorizations)
OTHER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"        # anvil account 2 (plain transfers)

_TWA_TYPEHASH = keccak(b"TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,"
                       b"uint256 validBefore,bytes32 nonce)")
_DOMAIN_TYPEHASH = keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
_TWA_SELECTOR = keccak(b"transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,"
                       b"bytes32,bytes32)")[:4]
_MINT_SELECTOR = keccak(b"mint(address,uint256)")[:4]
_TRANSFER_SELECTOR = keccak(b"transfer(address,uint256)")[:4]
_AUTH_STATE_SELECTOR = keccak(b"authorizationState(address,bytes32)")[:4]


def agent_account(i: int) -> LocalAccount:
    """A deterministic agent key (agents hold no ETH: the facilitator pays the gas)."""
    return Account.from_key(keccak(b"spendwatch-agent-%d" % i))


@dataclass(frozen=True, slots=True)
class Payment:
    agent_key: bytes
    agent: str
    to: str
    value: int
    nonce: bytes


def sign_authorization(token: str, chain_id: int, p: Payment, valid_before: int) -> bytes:
    """Calldata of transferWithAuthorization, signed by the agent's key (EIP-712, v/r/s)."""
    domain = keccak(abi_encode(["bytes32", "bytes32", "bytes32", "uint256", "address"],
                               [_DOMAIN_TYPEHASH, keccak(b"USD Coin"), keccak(b"2"), chain_id, token]))
    struct = keccak(abi_encode(["bytes32", "address", "address", "uint256", "uint256", "uint256", "bytes32"],
                               [_TWA_TYPEHASH, p.agent, p.to, p.value, 0, valid_before, p.nonce]))
    sig = keys.PrivateKey(p.agent_key).sign_msg_hash(keccak(b"\x19\x01" + domain + struct))
    return _TWA_SELECTOR + abi_encode(
        ["address", "address", "uint256", "uint256", "uint256", "bytes32", "uint8", "bytes32", "bytes32"],
        [p.agent, p.to, p.value, 0, valid_before, p.nonce, sig.v + 27, sig.r.to_bytes(32, "big"),
         sig.s.to_bytes(32, "big")])


def _sign_chunk(args: tuple[str, int, list[Payment], int]) -> list[bytes]:
    token, chain_id, payments, valid_before = args
    return [sign_authorization(token, chain_id, p, valid_before) for p in payments]


class Rpc:
    """A minimal JSON-RPC client over HTTP (an async context manager)."""

    def __init__(self, url: str, *, timeout_seconds: float = 60.0) -> None:
        self.url = url
        self._client = httpx.AsyncClient(timeout=timeout_seconds)
        self._id = 0

    async def __aenter__(self) -> Rpc:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def call(self, method: str, *params: object) -> object:
        self._id += 1
        r = await self._client.post(self.url, json={"jsonrpc": "2.0", "id": self._id, "method": method,
                                                    "params": list(params)})
        data = r.json()
        if "error" in data:
            raise ToolError(f"{method} failed: {data['error']}")
        return data["result"]

    async def batch(self, method: str, params_list: list[list]) -> list:
        """One JSON-RPC batch request; results in the order of params_list."""
        body = []
        for params in params_list:
            self._id += 1
            body.append({"jsonrpc": "2.0", "id": self._id, "method": method, "params": params})
        r = await self._client.post(self.url, json=body)
        answers = {a["id"]: a for a in r.json()}
        out = []
        for req in body:
            a = answers[req["id"]]
            if "error" in a:
                raise ToolError(f"{method} failed: {a['error']}")
            out.append(a["result"])
        return out

    async def receipt(self, tx_hash: str, *, timeout_seconds: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_seconds
        while True:
            rec = await self.call("eth_getTransactionReceipt", tx_hash)
            if rec is not None:
                if rec["status"] != "0x1":
                    raise ToolError(f"transaction {tx_hash} reverted")
                return rec
            if time.monotonic() > deadline:
                raise ToolError(f"no receipt for {tx_hash} after {timeout_seconds} s")
            await asyncio.sleep(0.02)


class TestToken:
    """A deployed TestUSDC on a node reachable at `http_url`."""

    __test__ = False  # not a pytest class

    def __init__(self, rpc: Rpc, address: str, chain_id: int) -> None:
        self.rpc, self.address, self.chain_id = rpc, address, chain_id
        self._nonce_counter = int.from_bytes(os.urandom(8), "big")

    @classmethod
    async def deploy(cls, rpc: Rpc, chain_id: int, source: Path = SOURCE) -> TestToken:
        art = await asyncio.to_thread(compile_contract, source, "TestUSDC")
        tx = await rpc.call("eth_sendTransaction", {"from": DEPLOYER, "data": art.bytecode, "gas": hex(3_000_000)})
        rec = await rpc.receipt(tx)
        from eth_utils import to_checksum_address
        return cls(rpc, to_checksum_address(rec["contractAddress"]), chain_id)

    async def _send(self, sender: str, data: bytes, gas: int = 150_000) -> str:
        return await self.rpc.call("eth_sendTransaction", {"from": sender, "to": self.address,
                                                           "data": "0x" + data.hex(), "gas": hex(gas)})

    async def mint(self, to: str, value: int) -> dict:
        tx = await self._send(DEPLOYER, _MINT_SELECTOR + abi_encode(["address", "uint256"], [to, value]))
        return await self.rpc.receipt(tx)

    async def transfer(self, sender: str, to: str, value: int) -> dict:
        """A plain ERC-20 transfer from an unlocked node account (no authorization)."""
        tx = await self._send(sender, _TRANSFER_SELECTOR + abi_encode(["address", "uint256"], [to, value]))
        return await self.rpc.receipt(tx)

    async def authorization_used(self, authorizer: str, nonce: bytes) -> bool:
        out = await self.rpc.call("eth_call", {"to": self.address, "data": "0x" + (
            _AUTH_STATE_SELECTOR + abi_encode(["address", "bytes32"], [authorizer, nonce])).hex()}, "latest")
        return int(out, 16) == 1

    def payment(self, agent: LocalAccount, to: str, value: int) -> Payment:
        self._nonce_counter += 1
        return Payment(bytes(agent.key), agent.address, to, value, keccak(b"%d" % self._nonce_counter))

    async def pay(self, agent: LocalAccount, to: str, value: int) -> tuple[Payment, dict]:
        """One x402-style payment: the agent signs, the facilitator submits; waits for the receipt."""
        p = self.payment(agent, to, value)
        tx = await self._send(FACILITATOR, sign_authorization(self.address, self.chain_id, p, 2**40))
        return p, await self.rpc.receipt(tx)

    async def sign_many(self, payments: Sequence[Payment], *, workers: int | None = None) -> list[bytes]:
        """Calldata of many payments, signed in a process pool (pure-Python ECDSA costs ~4 ms each)."""
        from concurrent.futures import ProcessPoolExecutor

        workers = workers or min(2, os.cpu_count() or 1)
        chunk = max(1, len(payments) // (workers * 4) + 1)
        parts = [(self.address, self.chain_id, list(payments[i:i + chunk]), 2**40)
                 for i in range(0, len(payments), chunk)]
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(workers) as pool:
            signed = await asyncio.gather(*(loop.run_in_executor(pool, _sign_chunk, part) for part in parts))
        return [c for part in signed for c in part]

    async def submit_many(self, calldata: Sequence[bytes], *, per_block: int = 200) -> list[str]:
        """Submit signed payments from the facilitator: automine off, one block per `per_block`
        transactions. Returns the tx hashes; the first and last are checked to be mined with status 1."""
        hashes: list[str] = []
        await self.rpc.call("evm_setAutomine", False)
        try:
            nonce = int(await self.rpc.call("eth_getTransactionCount", FACILITATOR, "pending"), 16)
            for i in range(0, len(calldata), per_block):
                hashes += await self.rpc.batch("eth_sendTransaction", [
                    [{"from": FACILITATOR, "to": self.address, "data": "0x" + data.hex(), "gas": hex(150_000),
                      "nonce": hex(nonce + i + j)}]
                    for j, data in enumerate(calldata[i:i + per_block])])
                await self.rpc.call("evm_mine")
        finally:
            await self.rpc.call("evm_setAutomine", True)
        for h in (hashes[0], hashes[-1]):
            await self.rpc.receipt(h)
        return hashes

    async def pay_many(self, payments: Sequence[Payment], *, per_block: int = 200) -> list[str]:
        return await self.submit_many(await self.sign_many(payments), per_block=per_block)
