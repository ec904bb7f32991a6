"""The OpenAPI 3.1 document of the admin API (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

_ERR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _action(summary: str, body: str = "Reason") -> dict[str, Any]:
    return {"summary": summary, "security": [{"bearer": []}],
            "parameters": [{"$ref": "#/components/parameters/Agent"}, {"$ref": "#/components/parameters/IdemKey"},
                           {"$ref": "#/components/parameters/Actor"}],
            "requestBody": {"required": False, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{body}"}}}},
            "responses": {"200": {"description": "done (changed=false: nothing to do)", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ActionResult"}}}},
                "400": _ERR, "401": _ERR, "409": _ERR,
                "503": {**_ERR, "description": "applied in the daemon but not recorded by Kafka yet (repeat it)"}}}


def _approve() -> dict[str, Any]:
    op = _action("approve the agent's pending escalation (none pending: changed=false, nothing approved ahead)")
    op["responses"]["404"] = {**_ERR, "description": "unknown agent: no payment and no breaker of it here"}
    return op


def openapi_document() -> dict[str, Any]:
    breaker = {"type": "object", "properties": {
        "state": {"enum": ["closed", "open", "half_open", "held"]}, "since_ms": {"type": "integer"},
        "trips": {"type": "integer"}, "cause": {"type": "string"}, "reopen_ms": {"type": "integer"},
        "probation_until_ms": {"type": "integer"}, "escalation": {"type": ["string", "null"]},
        "caps": {"type": ["object", "null"], "additionalProperties": {"type": "integer"}},
        "pending_webhooks": {"type": "integer"}}, "required": ["state"]}
    agent = {"type": "object", "properties": {
        "agent": {"type": "string"}, "name": {"type": ["string", "null"]},
        "partition": {"type": ["integer", "null"]}, "breaker": {"$ref": "#/components/schemas/Breaker"},
        "spend": {"type": "object", "description": "USDC base units per window",
                  "additionalProperties": {"type": "integer"}},
        "payments": {"type": "object", "additionalProperties": {"type": "integer"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "spendwatch admin API", "version": "1",
                 "description": "See, hold, release and approve agents; change their caps. Money is USDC base "
                                "units (6 decimals). Every /v1 call needs a bearer token; refused calls get 401 "
                                "and change nothing."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "parameters": {
                "Agent": {"name": "agent", "in": "path", "required": True,
                          "schema": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"}},
                "IdemKey": {"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string"}, "description": "a retried command acts once"},
                "Actor": {"name": "X-Spendwatch-Actor", "in": "header", "required": False,
                          "schema": {"type": "string"}, "description": "who acts (audit trail)"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}, "fix": {"type": "string"}},
                          "required": ["error"]},
                "Breaker": breaker, "Agent": agent,
                "Reason": {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 500}}},
                "Caps": {"type": "object", "properties": {
                    "reason": {"type": "string"},
                    "caps": {"type": ["object", "null"], "additionalProperties": {"type": "integer", "minimum": 0},
                             "description": "window name (1m, 1h or 24h) -> cap in USDC base units; null clears"}},
                    "required": ["caps"]},
                "ActionResult": {"type": "object", "properties": {
                    "agent": {"type": "string"}, "action": {"enum": ["hold", "release", "approve", "caps"]},
                    "changed": {"type": "boolean"}, "effect": {"type": ["string", "null"]},
                    "partition": {"type": "integer"}, "breaker": {"$ref": "#/components/schemas/Breaker"}}},
            }},
        "paths": {
            "/v1/agents": {"get": {
                "summary": "list agents: breakers not closed first, then the top spenders",
                "security": [{"bearer": []}],
                "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "default": 50}},
                               {"name": "state", "in": "query",
                                "schema": {"enum": ["closed", "open", "half_open", "held"]}}],
                "responses": {"200": {"description": "agents", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {
                        "agents": {"type": "array", "items": {"$ref": "#/components/schemas/Agent"}},
                        "windows": {"type": "array", "items": {"type": "string"}}}}}}},
                    "400": _ERR, "401": _ERR}}},
            "/v1/agents/{agent}": {"get": {
                "summary": "one agent", "security": [{"bearer": []}],
                "parameters": [{"$ref": "#/components/parameters/Agent"}],
                "responses": {"200": {"description": "the agent", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Agent"}}}}, "400": _ERR, "401": _ERR}}},
            "/v1/agents/{agent}/hold": {"post": _action("freeze the agent until a person releases it")},
            "/v1/agents/{agent}/release": {"post": _action("open/held -> half_open (probation); half_open -> closed")},
            "/v1/agents/{agent}/approve": {"post": _approve()},
            "/v1/agents/{agent}/caps": {"put": _action("set (or clear) the agent's caps", "Caps")},
            "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI"}}}},
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": {"description": "ok"}}}},
        }}
