"""The EVM node, over web3.py 8 (AsyncWeb3): WebSocket for live subscriptions, or HTTP for polling.

Calls go through `provider.make_request` and come back as the node's own JSON (0x hex strings), parsed
once by `watcher.chain.abi`. Subscriptions (logs of the token's Transfer and AuthorizationUsed, and new
heads) only wake the bridge: records always come from eth_getLogs by block hash, because a stream of
logs cannot tell when a block's logs are complete, and local nodes never send `removed: true`.

eth_getLogs over a range that the provider finds too large (too many blocks or too many results: the
wording differs per provider, see `is_range_refusal`) raises `RangeRefusedError`, so the bridge can read
the same blocks in smaller ranges instead of failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

from web3 import AsyncHTTPProvider, AsyncWeb3, WebSocketProvider

from watcher.chain.abi import WATCHED_TOPICS, Header, Log, address_topic, parse_header, parse_log
from watcher.chain.errors import NodeError, RangeRefusedError
from watcher.errors import EventError

log = logging.getLogger("spendwatch.chain.node")

MAX_TOPIC_WALLETS = 200   # above this, subscribe to every transfer and filter locally

# How providers say that an eth_getLogs range is too large (none of this is standardised), e.g.
#   Infura, geth -32005 "query returned more than 10000 results"; Alchemy -32602 "Log response size exceeded";
#   "block range too large", "exceed maximum block range: 50000", "block range is too wide",
#   reth "query exceeds max results 20000", "Response is too big", "Query timeout exceeded. Consider reducing
#   your block range."
RANGE_REFUSAL_CODES = frozenset({-32005, -32602})   # limit exceeded; invalid params (a range over the limit)
_RANGE_WORDS = re.compile(
    r"more than \d+ results|block range|range (is )?too (large|big|wide)|(max|maximum) (block )?range"
    r"|range limit|too many (logs|results|blocks)|max(imum)? results|response size|response is too (big|large)"
    r"|response too (big|large)|reduc\w* (the |your )?(block )?range|query timeout|query timed out", re.I)
_RATE_WORDS = re.compile(r"rate.?limit|rate exceeded|request count|too many requests|quota|credits", re.I)


def is_range_refusal(error: object) -> bool:
    """Whether a JSON-RPC error of eth_getLogs over several blocks says the range is too large (as opposed to
    rate limiting or a broken node). A wrong yes costs only smaller reads: a 1-block range is never refused
    as a range."""
    if not isinstance(error, Mapping):
        return bool(_RANGE_WORDS.search(str(error)))
    message = str(error.get("message", ""))
    if _RATE_WORDS.search(message):
        return False
    return error.get("code") in RANGE_REFUSAL_CODES or bool(_RANGE_WORDS.search(message))


class Node:
    """An async context manager around one connection to the node."""

    def __init__(self, *, ws_url: str | None, http_url: str | None, token: str,
                 wallets: frozenset[str] | None, request_timeout_seconds: float = 30.0) -> None:
        if ws_url is None and http_url is None:
            raise ValueError("ws_url or http_url")
        self.ws_url, self.http_url, self.token = ws_url, http_url, token
        self.timeout = request_timeout_seconds
        self.topics: list[Any] = [list(WATCHED_TOPICS)]
        if wallets is not None and 0 < len(wallets) <= MAX_TOPIC_WALLETS:
            # Transfer(from, ...) and AuthorizationUsed(authorizer, ...): the payer is topic 1 of both
            self.topics.append([address_topic(w) for w in sorted(wallets)])
        self.w3: AsyncWeb3 | None = None       # the WebSocket connection (subscriptions), if any
        self._calls: AsyncWeb3 | None = None   # where calls go: HTTP if configured, else the WebSocket
        self._stack: contextlib.AsyncExitStack | None = None

    @property
    def live(self) -> bool:
        return self.ws_url is not None

    async def __aenter__(self) -> Node:
        stack = contextlib.AsyncExitStack()
        try:
            if self.ws_url is not None:
                provider = WebSocketProvider(self.ws_url, request_timeout=self.timeout, max_connection_retries=1,
                                             websocket_kwargs={"max_size": 2**27})
                self.w3 = await asyncio.wait_for(stack.enter_async_context(AsyncWeb3(provider)), self.timeout)
                self._calls = self.w3
            if self.http_url is not None:
                # calls go over HTTP when there is an HTTP endpoint: web3's WebSocket provider waits for
                # each response by spinning on the event loop, which costs CPU and latency
                http = AsyncHTTPProvider(self.http_url, request_kwargs={"timeout": self.timeout},
                                         exception_retry_configuration=None)
                self._calls = AsyncWeb3(http)
                stack.push_async_callback(http.disconnect)
                await self._calls.provider.make_request("eth_chainId", [])
        except Exception as exc:
            await stack.aclose()
            raise NodeError(f"cannot connect to {self.ws_url or self.http_url}: {exc!r}") from exc
        self._stack = stack
        return self

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stack.aclose(), 5.0)

    async def request(self, method: str, params: list) -> Mapping[str, Any]:
        """The node's JSON-RPC response ({"result": ...} or {"error": {code, message}}); raises NodeError when
        there is none (connection lost, timeout)."""
        if self._calls is None:
            raise NodeError("node is not connected")
        try:
            return await asyncio.wait_for(self._calls.provider.make_request(method, params), self.timeout)
        except NodeError:
            raise
        except Exception as exc:
            raise NodeError(f"{method} failed: {exc!r}") from exc

    async def call(self, method: str, params: list) -> Any:
        resp = await self.request(method, params)
        if "error" in resp:
            raise NodeError(f"{method} refused: {resp['error']}")
        return resp.get("result")

    async def chain_id(self) -> int:
        raw = await self.call("eth_chainId", [])
        try:
            return int(raw, 16)
        except (TypeError, ValueError):
            raise NodeError(f"eth_chainId answered {str(raw)[:200]}, not a 0x quantity") from None

    async def header(self, number: int | str = "latest") -> Header | None:
        tag = hex(number) if isinstance(number, int) else number
        raw = await self.call("eth_getBlockByNumber", [tag, False])
        try:
            return parse_header(raw) if raw else None
        except EventError as exc:
            raise NodeError(f"eth_getBlockByNumber {tag} answered an unusable block: {exc}") from None

    async def headers(self, numbers: list[int]) -> dict[int, Header]:
        """Several headers, at most 16 calls in flight."""
        out: dict[int, Header] = {}
        for i in range(0, len(numbers), 16):
            part = numbers[i:i + 16]
            found = await asyncio.gather(*(self.header(n) for n in part))
            out.update((n, h) for n, h in zip(part, found) if h is not None)
        return out

    def _filter(self) -> dict[str, Any]:
        return {"address": self.token, "topics": self.topics}

    async def logs_by_hash(self, block_hash: str) -> list[Log]:
        raw = await self.call("eth_getLogs", [{**self._filter(), "blockHash": block_hash}])
        logs = _logs(raw, f"eth_getLogs of block {block_hash}")
        other = next((x.block_hash for x in logs if x.block_hash != block_hash), None)
        if other is not None:   # a provider that answers for another block: read it again, never mix blocks
            raise NodeError(f"eth_getLogs of block {block_hash} answered logs of block {other}")
        return logs

    async def logs_range(self, first: int, last: int) -> list[Log]:
        """Logs of blocks first..last; RangeRefusedError when the node finds the range too large (only for
        more than one block: a refused single block is a plain NodeError)."""
        resp = await self.request("eth_getLogs", [{**self._filter(), "fromBlock": hex(first),
                                                   "toBlock": hex(last)}])
        if "error" in resp:
            error = resp["error"]
            if last > first and is_range_refusal(error):
                raise RangeRefusedError(f"eth_getLogs over blocks {first}..{last} ({last - first + 1} blocks) "
                                        f"refused as too large: {error}", first=first, last=last)
            raise NodeError(f"eth_getLogs over blocks {first}..{last} refused: {error}")
        return _logs(resp.get("result"), f"eth_getLogs over blocks {first}..{last}")

    async def follow(self, on_wake: Callable[[int], None], on_subscribed: Callable[[], None] | None = None) -> None:
        """Subscribe to new heads and the token's logs; call on_wake(block number) for each message, and
        on_subscribed() once both subscriptions exist (a block mined before that sent no message: one more
        pass finds it). Returns (or raises) when the connection ends. The callbacks must not block or call
        the node."""
        if self.w3 is None or self.ws_url is None:
            raise NodeError("follow() needs a WebSocket connection")
        w3 = self.w3
        try:
            await w3.eth.subscribe("newHeads")
            await w3.eth.subscribe("logs", self._filter())
            if on_subscribed is not None:
                on_subscribed()
            async for msg in w3.socket.process_subscriptions():
                result = msg.get("result") if isinstance(msg, dict) else None
                number = None
                if result is not None:
                    number = result.get("number", result.get("blockNumber"))
                on_wake(int(number) if number is not None else -1)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise NodeError(f"subscription on {self.ws_url} ended: {exc!r}") from exc
        raise NodeError(f"subscription on {self.ws_url} ended")


def _logs(raw: Any, what: str) -> list[Log]:
    """The logs of an eth_getLogs answer; NodeError when it is not a list of logs (the bridge reads the
    blocks again after a reconnect, instead of stopping or taking them as empty)."""
    if not isinstance(raw, list):
        raise NodeError(f"{what} answered {str(raw)[:200]}, not a list of logs")
    try:
        return [parse_log(x) for x in raw]
    except EventError as exc:
        raise NodeError(f"{what} answered an unusable log: {exc}") from None
