"""A runnable x402 facilitator built from the SDK (`x402FacilitatorSync`, the exact EVM scheme, a
facilitator signer on an RPC node such as anvil), served over HTTP: for tests, the benchmark and the demo.

    async with LocalFacilitator(rpc_url, private_key, network="eip155:8453") as fac:
        fac.url                                   # POST /verify, POST /settle, GET /supported
        wire_facilitator(fac.facilitator, publisher, view)   # optional: the SDK-hook tap

The SDK calls are blocking (web3 over HTTP), so they run in worker threads: the event loop stays free.
A before-hook refusal (PaymentAbortedError) is answered with HTTP 200 and isValid/success false, which is
what the SDK's HTTPFacilitatorClient expects; a malformed body gets 400.

`ServerThread` runs an ASGI app (the FastAPI merchant) under uvicorn in a thread of its own, so a
blocking call it makes (the SDK middleware's startup GET /supported) never stalls the caller's loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

from aiohttp import web
from x402 import x402FacilitatorSync
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.exact import register_exact_evm_facilitator
from x402.schemas import PaymentAbortedError, parse_payment_payload, parse_payment_requirements

from watcher.chain.devnet import free_port
from watcher.tap.hooks import refused_settle, refused_verify
from watcher.tap.records import payer_of

log = logging.getLogger("watcher.tap.local")
# anvil's account 1 (mnemonic "test test ... junk"): watcher.chain.testtoken.FACILITATOR
ANVIL_FACILITATOR_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"


def _dump(model: Any) -> dict:
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


class LocalFacilitator:
    """The SDK's facilitator on aiohttp, on 127.0.0.1 (a free port unless given)."""

    def __init__(self, rpc_url: str, private_key: str = ANVIL_FACILITATOR_KEY, *, network: str = "eip155:8453",
                 host: str = "127.0.0.1", port: int | None = None, workers: int = 8) -> None:
        self.signer = FacilitatorWeb3Signer(private_key=private_key, rpc_url=rpc_url)
        self.facilitator = x402FacilitatorSync()
        register_exact_evm_facilitator(self.facilitator, self.signer, networks=network)
        self.network, self.host, self.port = network, host, port or free_port()
        self._sem = asyncio.Semaphore(workers)
        self._runner: web.AppRunner | None = None
        self.calls = {"verify": 0, "settle": 0, "supported": 0}
        app = self.app = web.Application(client_max_size=256 * 1024)
        app.router.add_post("/verify", self.verify)
        app.router.add_post("/settle", self.settle)
        app.router.add_get("/supported", self.supported)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> LocalFacilitator:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        log.info("local x402 facilitator (signer %s) on %s", self.signer.address, self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _parse(self, request: web.Request):
        try:
            body = await request.json()
            payload = parse_payment_payload(body["paymentPayload"])
            reqs = parse_payment_requirements(payload.x402_version, body["paymentRequirements"])
        except Exception as exc:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"bad request body: {exc}"[:500]}),
                                     content_type="application/json")
        return body, payload, reqs

    async def verify(self, request: web.Request) -> web.Response:
        self.calls["verify"] += 1
        body, payload, reqs = await self._parse(request)
        async with self._sem:
            try:
                res = await asyncio.to_thread(self.facilitator.verify, payload, reqs)
            except PaymentAbortedError as exc:
                return web.json_response(refused_verify(exc, payer_of(body["paymentPayload"])))
            except Exception as exc:
                return web.json_response({"isValid": False, "invalidReason": "unexpected_verify_error",
                                          "invalidMessage": repr(exc)[:300]})
        return web.json_response(_dump(res))

    async def settle(self, request: web.Request) -> web.Response:
        self.calls["settle"] += 1
        body, payload, reqs = await self._parse(request)
        async with self._sem:
            try:
                res = await asyncio.to_thread(self.facilitator.settle, payload, reqs)
            except PaymentAbortedError as exc:
                return web.json_response(refused_settle(exc, reqs.network, payer_of(body["paymentPayload"])))
            except Exception as exc:
                return web.json_response({"success": False, "errorReason": "unexpected_settle_error",
                                          "errorMessage": repr(exc)[:300], "transaction": "",
                                          "network": reqs.network})
        return web.json_response(_dump(res))

    async def supported(self, request: web.Request) -> web.Response:
        self.calls["supported"] += 1
        return web.json_response(_dump(self.facilitator.get_supported()))


class ServerThread:
    """An ASGI app under uvicorn in its own thread and event loop. Context manager (sync or async)."""

    def __init__(self, app_factory, *, host: str = "127.0.0.1", port: int | None = None,
                 ready_timeout_seconds: float = 30.0) -> None:
        self.app_factory, self.host, self.port = app_factory, host, port or free_port()
        self.ready_timeout = ready_timeout_seconds
        self.server = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        import uvicorn
        try:
            app = self.app_factory()   # built here: its blocking startup calls stay in this thread
            config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", lifespan="off",
                                    access_log=False)
            self.server = uvicorn.Server(config)
            self.server.run()
        except BaseException as exc:  # reported by start()
            self.error = exc

    def start(self) -> ServerThread:
        self._thread = threading.Thread(target=self._run, name=f"asgi:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.ready_timeout
        while not (self.server is not None and self.server.started):
            if self.error is not None:
                raise RuntimeError(f"server on port {self.port} failed to start: {self.error!r}") from self.error
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"server on port {self.port} did not start within {self.ready_timeout} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> ServerThread:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)
