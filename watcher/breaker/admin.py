"""The admin HTTP API (aiohttp), bearer-token authenticated, loopback by default. OpenAPI at /openapi.json.

    GET  /v1/agents?limit=50&state=open     agents with spend per window and breaker state
    GET  /v1/agents/{agent}                 one agent
    POST /v1/agents/{agent}/hold            {"reason": "..."}  freeze until released
    POST /v1/agents/{agent}/release         {"reason": "..."}  open/held -> half_open; half_open -> closed
    POST /v1/agents/{agent}/approve         {"reason": "..."}  answer the pending escalation (none: changed
                                            false, nothing approved ahead; an agent never seen: 404)
    PUT  /v1/agents/{agent}/caps            {"caps": {"1m": 2000000, "24h": 50000000} | null}  base units
                                            (windows 1m, 1h, 24h: the ones detection holds caps for)

Every /v1 request needs `Authorization: Bearer <admin.token>`; without a configured token every request
is refused. Refused requests get 401 and change nothing. A change Kafka does not record within a few
seconds gets 503 saying so (applied in the daemon, recorded with its next batch once Kafka answers). `Idempotency-Key` on a POST makes a retried
command act once; `X-Spendwatch-Actor` names the person (recorded as by="admin:<actor>").
"""

from __future__ import annotations

import hmac
import logging
import re
from typing import Any

from aiohttp import web

from watcher.breaker.config import AdminSettings
from watcher.breaker.openapi import openapi_document
from watcher.breaker.stage import BreakerStage, NotOwnedError, NotRecordedError, UnknownAgentError, _canon
from watcher.detect.rules import CAP_WINDOWS

CAPPABLE = tuple(w for _, w, _ in CAP_WINDOWS)   # the windows detection holds caps for (1m, 1h, 24h)

log = logging.getLogger("watcher.breaker.admin")
ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
STATES = ("closed", "open", "half_open", "held")


def _json_error(status: int, message: str, fix: str = "") -> web.Response:
    body = {"error": message}
    if fix:
        body["fix"] = fix
    return web.json_response(body, status=status)


class AdminServer:
    """Async context manager serving the API for one BreakerStage (and the daemon's shards, if given)."""

    def __init__(self, settings: AdminSettings, stage: BreakerStage, daemon: Any = None) -> None:
        self.settings, self.stage, self.daemon = settings, stage, daemon
        self.token = settings.token.get_secret_value().encode() if settings.token else None
        self.runner: web.AppRunner | None = None
        self.port = settings.port
        self.app = web.Application(middlewares=[self._auth], client_max_size=64 * 1024)
        r = self.app.router
        r.add_get("/openapi.json", self.openapi)
        r.add_get("/healthz", self.health)
        r.add_get("/v1/agents", self.list_agents)
        r.add_get("/v1/agents/{agent}", self.get_agent)
        for action in ("hold", "release", "approve"):
            r.add_post(f"/v1/agents/{{agent}}/{action}", self._action(action))
        r.add_put("/v1/agents/{agent}/caps", self.caps)

    async def __aenter__(self) -> "AdminServer":
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        if self.token is None:
            log.warning("admin API on http://%s:%d has no token (admin.token / SPENDWATCH_ADMIN_TOKEN): it "
                        "refuses every request", self.settings.host, self.port)
        else:
            log.info("admin API on http://%s:%d (OpenAPI at /openapi.json)", self.settings.host, self.port)
        return self

    async def __aexit__(self, *exc) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # -- auth ----------------------------------------------------------------------------------
    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if request.path.startswith("/v1/"):
            given = request.headers.get("Authorization", "")
            ok = (self.token is not None and given.startswith("Bearer ")
                  and hmac.compare_digest(given[7:].strip().encode(), self.token))
            if not ok:
                self.stage.metrics.admin_requests.labels("401").inc()
                log.warning("admin API: refused %s %s from %s (missing or wrong bearer token)", request.method,
                            request.path, request.remote)
                resp = _json_error(401, "unauthorized", "send Authorization: Bearer <admin.token>")
                resp.headers["WWW-Authenticate"] = 'Bearer realm="spendwatch"'
                return resp
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            self.stage.metrics.admin_requests.labels(str(exc.status)).inc()
            raise
        self.stage.metrics.admin_requests.labels(str(resp.status)).inc()
        return resp

    # -- handlers ------------------------------------------------------------------------------
    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "partitions": sorted(self.stage.parts),
                                  "undelivered_webhooks": self.stage.undelivered()})

    def _windows(self) -> list[str]:
        if self.daemon is None:
            return []
        return [w.name for w in self.daemon.settings.windows]

    def _spend(self, agent: str) -> tuple[dict, dict]:
        names = self._windows()
        if self.daemon is None:
            return {}, {}
        from watcher.pipeline.shard import agent_key
        key = agent_key(agent)
        for shard in self.daemon.shards.values():
            if key in shard.agents.index:
                sums, counts = shard.agent_totals(agent)
                return dict(zip(names, map(int, sums))), dict(zip(names, map(int, counts)))
        return {n: 0 for n in names}, {n: 0 for n in names}

    def _row(self, agent: str) -> dict[str, Any]:
        spend, payments = self._spend(agent)
        return {"agent": agent, "name": self.stage.names.get(agent), "partition": self.stage.where.get(agent),
                "breaker": self.stage.view(agent), "spend": spend, "payments": payments}

    async def list_agents(self, request: web.Request) -> web.Response:
        try:
            limit = max(1, min(1000, int(request.query.get("limit", "50"))))
        except ValueError:
            return _json_error(400, "limit must be an integer")
        state = request.query.get("state")
        if state and state not in STATES:
            return _json_error(400, f"state must be one of {STATES}")
        agents: dict[str, None] = {a: None for _, a, _ in self.stage.breakers()}
        if self.daemon is not None and state in (None, "closed"):
            from watcher.view import top_agents
            for wallet, _, _ in top_agents(self.daemon.shards, limit):
                agents.setdefault(_canon(wallet), None)
        rows = [self._row(a) for a in agents]
        if state:
            rows = [r for r in rows if r["breaker"]["state"] == state]
        order = {"held": 0, "open": 1, "half_open": 2, "closed": 3}
        rows.sort(key=lambda r: (order[r["breaker"]["state"]], -(next(iter(r["spend"].values()), 0))))
        return web.json_response({"agents": rows[:limit], "windows": self._windows(),
                                  "unit": "usdc_base_units", "partitions": sorted(self.stage.parts)})

    def _agent(self, request: web.Request) -> str:
        agent = request.match_info["agent"]
        if not ADDRESS.match(agent):
            raise web.HTTPBadRequest(text='{"error": "agent must be a 0x wallet address (40 hex digits)"}',
                                     content_type="application/json")
        return _canon(agent)

    async def get_agent(self, request: web.Request) -> web.Response:
        return web.json_response(self._row(self._agent(request)))

    async def _body(self, request: web.Request) -> dict:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text='{"error": "body must be JSON"}', content_type="application/json")
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}', content_type="application/json")
        return body

    async def _act(self, request: web.Request, action: str, **kw) -> web.Response:
        agent = self._agent(request)
        body = kw.pop("body", None)
        if body is None:
            body = await self._body(request)
        reason = str(body.get("reason", ""))[:500]
        by = "admin:" + (request.headers.get("X-Spendwatch-Actor", "") or "unknown")[:64]
        try:
            out = await self.stage.act(action, agent, by=by, reason=reason,
                                       command_id=request.headers.get("Idempotency-Key"), **kw)
        except NotOwnedError as exc:
            return _json_error(409, str(exc), "send the request to the replica that owns the partition")
        except UnknownAgentError as exc:
            return _json_error(404, str(exc), "check the wallet (spendwatch breaker list shows the agents)")
        except NotRecordedError as exc:
            log.error("admin %s %s by %s: %s", action, agent, by, exc)
            return _json_error(503, str(exc), "check Kafka (kafka.bootstrap), then repeat the command")
        log.info("admin %s %s by %s: changed=%s", action, agent, by, out["changed"])
        return web.json_response(out)

    def _action(self, action: str):
        async def handler(request: web.Request) -> web.Response:
            return await self._act(request, action)
        return handler

    async def caps(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        caps = body.get("caps")
        if caps is not None:
            windows = set(self._windows()) or None
            if not isinstance(caps, dict) or not all(
                    isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                    for k, v in caps.items()):
                return _json_error(400, "caps must map window names to integer USDC base units (>= 0)",
                                   'e.g. {"caps": {"1m": 2000000, "24h": 50000000}}')
            if windows and not set(caps) <= windows:
                return _json_error(400, f"unknown windows {sorted(set(caps) - windows)}; known: {sorted(windows)}")
            cappable = [w for w in CAPPABLE if not windows or w in windows]
            if not set(caps) <= set(cappable):
                return _json_error(400, f"windows {sorted(set(caps) - set(cappable))} cannot be capped: detection "
                                   f"enforces caps on {cappable} only", 'e.g. {"caps": {"1m": 2000000}}')
        return await self._act(request, "caps", caps=caps, body=body)
