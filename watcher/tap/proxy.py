"""`spendwatch facilitator`: an HTTP facilitator in front of any upstream facilitator.

    merchant ──POST /verify, /settle, GET /supported──► TapProxy ──same call──► upstream facilitator
                                                         │ x402.verify / x402.settle records (Kafka, buffered)
                                                         └ refuses frozen payers (breaker view)

Speaks the facilitator API of x402 protocol v1 and v2 (body `{x402Version, paymentPayload,
paymentRequirements}`). Each call is forwarded unchanged, with the caller's headers (an upstream's auth
header passes through), and the upstream's answer is returned unchanged (status, body, content type).
A payer whose breaker is open or held is refused at /verify and at /settle without calling upstream:
HTTP 200 with `isValid`/`success` false and `invalidReason`/`errorReason` = spendwatch_agent_frozen
(or spendwatch_agent_held), which the SDK's facilitator client turns into the merchant's 402. With the
gate failing closed, so is a call whose payer cannot be read (no authorization `from`, a malformed body:
spendwatch_payer_unknown); failing open, it is forwarded (counted in spendwatch_tap_breaker_unknown_total).

Also: GET /healthz (JSON: buffer, breaker view, counters), GET /metrics (Prometheus).
An upstream that cannot be reached gets HTTP 502 (as the merchant would have seen calling it directly).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from watcher.tap.breakers import Gate
from watcher.tap.metrics import TapMetrics
from watcher.tap.records import network_of, payers_of, settle_record, verify_record

log = logging.getLogger("watcher.tap.proxy")
_HOP = frozenset({"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade",
                  "proxy-authorization", "te", "trailer", "accept-encoding"})
_dec = msgspec.json.Decoder()


class TapProxy:
    """Async context manager serving the proxy on host:port (port 0: a free one, see `.port`)."""

    def __init__(self, upstream: str, publisher: Any, gate: Gate | None, *, name: str = "spendwatch-tap",
                 host: str = "127.0.0.1", port: int = 0, metrics: TapMetrics | None = None,
                 upstream_timeout_seconds: float = 60.0, max_connections: int = 256) -> None:
        self.upstream = upstream.rstrip("/")
        self.publisher, self.gate, self.name = publisher, gate, name
        self.host, self.port = host, port
        self.metrics = metrics or getattr(publisher, "metrics", None) or TapMetrics()
        self.timeout = aiohttp.ClientTimeout(total=upstream_timeout_seconds)
        self.max_connections = max_connections
        self.counts = {"verify": 0, "settle": 0, "supported": 0, "refused": 0, "upstream_errors": 0}
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        app = self.app = web.Application(client_max_size=256 * 1024)
        app.router.add_post("/verify", self.verify)
        app.router.add_post("/settle", self.settle)
        app.router.add_get("/supported", self.supported)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/metrics", self.prometheus)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> TapProxy:
        self._session = aiohttp.ClientSession(
            timeout=self.timeout, connector=aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=60),
            auto_decompress=False, skip_auto_headers=("User-Agent",))
        try:
            self._runner = web.AppRunner(self.app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
            await site.start()   # a taken port fails here: the session and the runner are closed first
        except BaseException:
            await self.__aexit__()
            raise
        self.port = site._server.sockets[0].getsockname()[1]
        log.info("facilitator tap on %s in front of %s", self.url, self.upstream)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- forwarding ------------------------------------------------------------------------------
    async def _forward(self, request: web.Request, call: str, body: bytes | None) -> tuple[int, bytes, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        t0 = time.perf_counter()
        try:
            async with self._session.request(request.method, f"{self.upstream}/{call}", data=body,
                                             headers=headers, params=request.query) as resp:
                data = await resp.read()
                ctype = resp.headers.get("Content-Type", "application/json")
                status = resp.status
        except Exception as exc:
            self.counts["upstream_errors"] += 1
            log.warning("upstream %s/%s failed: %r", self.upstream, call, exc)
            return 502, msgspec.json.encode({"error": "upstream facilitator unreachable",
                                             "detail": repr(exc)[:300], "upstream": self.upstream}), \
                "application/json"
        finally:
            self.metrics.upstream.labels(call).observe(time.perf_counter() - t0)
        return status, data, ctype

    @staticmethod
    def _split(raw: bytes) -> tuple[dict, dict, dict] | None:
        """(body, paymentPayload, paymentRequirements) of a verify/settle body, or None if malformed."""
        try:
            body = _dec.decode(raw)
        except msgspec.DecodeError:
            return None
        if not isinstance(body, dict):
            return None
        pp, req = body.get("paymentPayload"), body.get("paymentRequirements")
        if not isinstance(pp, dict) or not isinstance(req, dict):
            return None
        return body, pp, req

    def _reply(self, call: str, status: int, data: bytes, ctype: str) -> web.Response:
        self.metrics.requests.labels(call, str(status)).inc()
        return web.Response(status=status, body=data, headers={"Content-Type": ctype})

    def _refuse(self, call: str, parts: tuple[dict, dict, dict] | None) -> web.Response | None:
        """The refusal of a frozen payer, or (fail closed) of a payment whose payer cannot be read (a
        malformed body included); None lets the call through to upstream."""
        if self.gate is None:
            return None
        payer, refusal = self.gate.check_all([] if parts is None else payers_of(parts[1]), call)
        if refusal is None:
            return None
        self.counts["refused"] += 1
        who = {} if payer is None else {"payer": payer}
        if call == "verify":
            answer = {"isValid": False, "invalidReason": refusal.reason, "invalidMessage": refusal.message, **who}
            if parts is not None and payer is not None:    # no payer: no wallet to key or count it by
                body, pp, req = parts
                self.publisher.offer(verify_record(pp, req, answer, facilitator=self.name,
                                                   declared_version=body.get("x402Version")))
        else:
            answer = {"success": False, "errorReason": refusal.reason, "errorMessage": refusal.message, **who,
                      "transaction": "", "network": "" if parts is None else network_of(parts[1], parts[2])}
        log.info("refused %s for %s: %s", call, payer or "an unknown payer", refusal.reason)
        return self._reply(call, 200, msgspec.json.encode(answer), "application/json")

    async def _payment_call(self, request: web.Request, call: str) -> web.Response:
        self.counts[call] += 1
        raw = await request.read()
        parts = self._split(raw)
        refused = self._refuse(call, parts)
        if refused is not None:
            return refused
        status, data, ctype = await self._forward(request, call, raw)
        if parts is not None and status == 200:
            self._record(call, parts, data)
        return self._reply(call, status, data, ctype)

    def _record(self, call: str, parts: tuple[dict, dict, dict], data: bytes) -> None:
        body, pp, req = parts
        try:
            resp = _dec.decode(data)
            if not isinstance(resp, dict):
                raise ValueError("answer is not a JSON object")
            build = verify_record if call == "verify" else settle_record
            self.publisher.offer(build(pp, req, resp, facilitator=self.name,
                                       declared_version=body.get("x402Version")))
        except Exception as exc:  # the payment goes on; the record is lost and said so
            self.metrics.records.labels(f"x402.{call}", "unrecordable").inc()
            log.warning("upstream %s answer not recordable: %r", call, exc)

    async def verify(self, request: web.Request) -> web.Response:
        return await self._payment_call(request, "verify")

    async def settle(self, request: web.Request) -> web.Response:
        return await self._payment_call(request, "settle")

    async def supported(self, request: web.Request) -> web.Response:
        self.counts["supported"] += 1
        status, data, ctype = await self._forward(request, "supported", None)
        return self._reply("supported", status, data, ctype)

    async def health(self, request: web.Request) -> web.Response:
        pub = self.publisher
        view = getattr(self.gate, "view", None)
        return web.json_response({
            "upstream": self.upstream, "counts": self.counts,
            "publisher": {"buffered": getattr(pub, "buffered", 0), "published": getattr(pub, "published", 0),
                          "dropped": getattr(pub, "dropped", 0), "connected": getattr(pub, "connected", None)},
            "breakers": None if view is None else {"view": type(view).__name__,
                                                   "current": getattr(view, "current", None),
                                                   "not_closed": len(getattr(view, "states", {})),
                                                   "fail_mode": self.gate.fail_mode}})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})
