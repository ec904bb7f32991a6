"""The other real parts of an x402 payment loop on a dev chain: a merchant API and paying agents.

    merchant_app(facilitator_url, token, pay_to, prices)  -> FastAPI app with the SDK's payment middleware
    agent_client(account, token)                           -> x402HttpxClient that pays with the agent's key

The merchant prices its routes in the test USDC (an `AssetAmount` with the token's EIP-712 domain "USD
Coin" / "2"), since the SDK only knows the real USDC per network; agents allow that asset in their spend
controls. Used by the end-to-end test, the benchmark and `spendwatch demo --real-chain`.
"""

from __future__ import annotations

from typing import Any

NETWORK = "eip155:8453"
DOMAIN = {"name": "USD Coin", "version": "2"}


def merchant_app(facilitator_url: str, token: str, pay_to: str, prices: dict[str, int], *,
                 network: str = NETWORK) -> Any:
    """A FastAPI app: `GET /<name>` costs prices[name] base units of `token`, paid to `pay_to`.

    Building it calls the facilitator's GET /supported (blocking): build it in the thread that serves it
    (see watcher.tap.local.ServerThread)."""
    from fastapi import FastAPI
    from x402 import x402ResourceServer
    from x402.http import FacilitatorConfig, HTTPFacilitatorClient
    from x402.http.middleware.fastapi import payment_middleware
    from x402.mechanisms.evm.exact import ExactEvmServerScheme
    from x402.schemas import AssetAmount

    server = x402ResourceServer(HTTPFacilitatorClient(FacilitatorConfig(url=facilitator_url, timeout=60.0)))
    server.register(network, ExactEvmServerScheme())
    routes = {f"GET /{name}": {"accepts": {"scheme": "exact", "payTo": pay_to, "network": network,
                                           "price": AssetAmount(amount=str(amount), asset=token, extra=DOMAIN),
                                           "maxTimeoutSeconds": 300},
                               "description": f"{name} ({amount} base units)"}
              for name, amount in prices.items()}
    app = FastAPI()
    mw = payment_middleware(routes, server)

    @app.middleware("http")
    async def x402_mw(request, call_next):
        return await mw(request, call_next)

    for name in prices:
        async def handler(name: str = name) -> dict:
            return {"item": name, "data": "paid content"}
        app.add_api_route(f"/{name}", handler, methods=["GET"])
    return app


def agent_client(account: Any, token: str, *, network: str = NETWORK, max_per_payment: int = 1_000_000,
                 timeout_seconds: float = 60.0) -> Any:
    """An httpx AsyncClient that answers 402 by signing an EIP-3009 authorization with `account`."""
    from x402 import x402Client
    from x402.http.clients import x402HttpxClient
    from x402.mechanisms.evm import EthAccountSigner
    from x402.mechanisms.evm.exact import register_exact_evm_client

    client = x402Client()
    register_exact_evm_client(client, EthAccountSigner(account), networks=network)
    client.set_spend_controls({"allowed_assets": [{"network": network, "asset": token,
                                                   "max_amount_per_payment": str(max_per_payment)}]})
    return x402HttpxClient(client, timeout=timeout_seconds)


def payment_error(response: Any) -> str | None:
    """Why a 402 answer refused the payment: the `error` of its PAYMENT-REQUIRED header (base64 JSON; a
    refusal at /verify), the `errorReason` of its PAYMENT-RESPONSE header (a refusal at /settle), or the
    body's `error`."""
    import base64
    import json

    for name, field in (("PAYMENT-REQUIRED", "error"), ("PAYMENT-RESPONSE", "errorReason")):
        header = response.headers.get(name)
        if header:
            try:
                found = json.loads(base64.b64decode(header)).get(field)
            except Exception:
                found = None
            if found:
                return found
    try:
        body = response.json()
    except Exception:
        return None
    return (body.get("error") or body.get("errorReason")) if isinstance(body, dict) else None
