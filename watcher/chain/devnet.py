"""A local EVM node for tests and the benchmark: anvil from tools/npm, as an async context manager.

    async with Anvil(chain_id=8453) as node:
        node.http_url, node.ws_url, node.pid
        await node.stop(); await node.start()     # same port; with state_path, same chain

The process started is the anvil binary itself (never the npm bin.mjs wrapper), its PID is recorded,
and it is terminated (then killed) on exit, whatever happened inside the block.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from pathlib import Path

import httpx

from watcher.chain.solc import ToolError, anvil_binary
from watcher.errors import ClosedError

MNEMONIC = "test test test test test test test test test test test junk"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Anvil:
    """One anvil process on 127.0.0.1. `state_path` makes stop()/start() keep the chain (blocks too)."""

    def __init__(self, *, chain_id: int = 8453, port: int | None = None, state_path: Path | None = None,
                 block_time_seconds: float | None = None, extra_args: tuple[str, ...] = (),
                 ready_timeout_seconds: float = 15.0) -> None:
        self.chain_id = chain_id
        self.port = port or free_port()
        self.state_path = state_path
        self.block_time_seconds = block_time_seconds
        self.extra_args = extra_args
        self.ready_timeout_seconds = ready_timeout_seconds
        self._proc: asyncio.subprocess.Process | None = None
        self._closed = False

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def __aenter__(self) -> Anvil:
        if self._closed:
            raise ClosedError("this Anvil was closed; make a new one")
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        await self.stop()

    async def start(self) -> None:
        if self.running:
            return
        args = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port),
                "--chain-id", str(self.chain_id), "--mnemonic", MNEMONIC, "--silent"]
        if self.state_path is not None:
            args += ["--state", str(self.state_path), "--preserve-historical-states"]
        if self.block_time_seconds is not None:
            args += ["--block-time", str(self.block_time_seconds)]
        args += list(self.extra_args)
        self._proc = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
        try:
            await self._wait_ready()
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_seconds
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                assert self._proc is not None
                if self._proc.returncode is not None:
                    err = (await self._proc.stderr.read()).decode(errors="replace") if self._proc.stderr else ""
                    raise ToolError(f"anvil exited with {self._proc.returncode} on port {self.port}: {err[-1500:]}")
                with contextlib.suppress(httpx.HTTPError):
                    r = await client.post(self.http_url, json=body)
                    if r.status_code == 200 and int(r.json()["result"], 16) == self.chain_id:
                        return
                if time.monotonic() > deadline:
                    raise ToolError(f"anvil on port {self.port} not ready after {self.ready_timeout_seconds} s")
                await asyncio.sleep(0.05)

    async def stop(self, *, kill: bool = False, timeout_seconds: float = 10.0) -> None:
        """SIGTERM (anvil dumps --state on it) or SIGKILL; waits until the process is gone."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_seconds)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise

    async def rpc(self, method: str, params: list | None = None) -> object:
        """One JSON-RPC call over HTTP (for anvil_* cheat codes)."""
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}
        async with httpx.AsyncClient(timeout=30.0) as client:
            r = await client.post(self.http_url, json=body)
        data = r.json()
        if "error" in data:
            raise ToolError(f"{method} failed: {data['error']}")
        return data["result"]
