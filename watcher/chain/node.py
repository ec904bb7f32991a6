"""The EVM node, over web3.py 8 (AsyncWeb3): WebSocket for live subscriptions, or HTTP for polling.

Calls go through `provider.make_request` and come back as the node's own JSON (0x hex strings), parsed
once by `watcher.chain.abi`. Subscriptions (logs of the token's Transfer and AuthorizationUsed, and new
heads) only wake the bridge: records always come from eth_getLogs by block hash, because a stream of
logs cannot tell when a block's logs are complete, and local nodes never send `removed: true`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from web3 import AsyncHTTPProvider, AsyncWeb3, WebSocketProvider

from watcher.chain.abi import WATCHED_TOPICS, Header, Log, address_topic, parse_header, parse_log
from watcher.chain.errors import NodeError

log = logging.getLogger("spendwatch.chain.node")

MAX_TOPIC_WALLETS = 200   # above this, subscribe to every transfer and filter locally


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

    async def call(self, method: str, params: list) -> Any:
        if self._calls is None:
            raise NodeError("node is not connected")
        try:
            resp = await asyncio.wait_for(self._calls.provider.make_request(method, params), self.timeout)
        except NodeError:
            raise
        except Exception as exc:
            raise NodeError(f"{method} failed: {exc!r}") from exc
        if "error" in resp:
            raise NodeError(f"{method} refused: {resp['error']}")
        return resp.get("result")

    async def chain_id(self) -> int:
        return int(await self.call("eth_chainId", []), 16)

    async def header(self, number: int | str = "latest") -> Header | None:
        tag = hex(number) if isinstance(number, int) else number
        raw = await self.call("eth_getBlockByNumber", [tag, False])
        return parse_header(raw) if raw else None

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
        return [parse_log(x) for x in raw]

    async def logs_range(self, first: int, last: int) -> list[Log]:
        raw = await self.call("eth_getLogs", [{**self._filter(), "fromBlock": hex(first), "toBlock": hex(last)}])
        return [parse_log(x) for x in raw]

    async def follow(self, on_wake: Callable[[int], None]) -> None:
        """Subscribe to new heads and the token's logs; call on_wake(block number) for each message.
        Returns (or raises) when the connection ends. on_wake must not block or call the node."""
        if self.w3 is None or self.ws_url is None:
            raise NodeError("follow() needs a WebSocket connection")
        w3 = self.w3
        try:
            await w3.eth.subscribe("newHeads")
            await w3.eth.subscribe("logs", self._filter())
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
