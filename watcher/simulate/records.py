"""Build x402.settle / x402.verify / chain.transfer / chain.progress records in the protocol's own
shapes.

The templates come from the PyPI package `x402`'s pydantic types (x402.schemas for v2,
x402.schemas.v1 for v1), dumped once in their camelCase wire form; each record is a copy of a template
with its values filled in, so shapes are the protocol's and building stays cheap.
"""

from __future__ import annotations

import copy
import hashlib
from datetime import datetime, timezone

import msgspec
from x402.schemas import PaymentPayload, PaymentRequirements, ResourceInfo, SettleResponse, VerifyResponse
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from watcher.events.wire import chain_progress_id, chain_transfer_id

BASE_USDC = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
_ZERO = "0x" + "00" * 20


def _dump(model) -> dict:
    return model.model_dump(by_alias=True, exclude_none=True)


def _auth(payer: str, pay_to: str, amount: int, nonce: str) -> dict:
    return {"from": payer, "to": pay_to, "value": str(amount), "validAfter": "0",
            "validBefore": "9999999999", "nonce": nonce}


def _templates() -> dict[int, tuple[dict, dict]]:
    req2 = PaymentRequirements(scheme="exact", network="eip155:8453", asset=BASE_USDC, amount="0",
                               pay_to=_ZERO, max_timeout_seconds=60,
                               extra={"name": "USD Coin", "version": "2"})
    payload = {"signature": "0x" + "11" * 65, "authorization": _auth(_ZERO, _ZERO, 0, "0x" + "0" * 64)}
    pp2 = PaymentPayload(x402_version=2, accepted=req2, resource=ResourceInfo(url="https://x/"), payload=payload)
    req1 = PaymentRequirementsV1(scheme="exact", network="base", max_amount_required="0", resource="https://x/",
                                 description="", mime_type="application/json", pay_to=_ZERO,
                                 max_timeout_seconds=60, asset=BASE_USDC,
                                 extra={"name": "USD Coin", "version": "2"})
    pp1 = PaymentPayloadV1(x402_version=1, scheme="exact", network="base", payload=payload)
    return {2: (_dump(req2), _dump(pp2)), 1: (_dump(req1), _dump(pp1))}


_TEMPLATES = _templates()
_V1_NAMES = {"eip155:8453": "base", "eip155:84532": "base-sepolia"}


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def fake_hash(*parts) -> str:
    return "0x" + hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _request(version: int, payer: str, pay_to: str, amount: int, asset: str, network: str, resource: str,
             nonce: str) -> tuple[dict, dict]:
    req_t, pp_t = _TEMPLATES[version]
    req = dict(req_t)
    pp = copy.deepcopy(pp_t)
    req["payTo"], req["asset"] = pay_to, asset
    if version == 2:
        req["network"], req["amount"] = network, str(amount)
        pp["accepted"] = req
        pp["resource"] = {"url": resource}
    else:
        net = _V1_NAMES.get(network, network)
        req["network"], req["maxAmountRequired"], req["resource"] = net, str(amount), resource
        pp["network"] = net
    pp["payload"]["authorization"] = _auth(payer, pay_to, amount, nonce)
    return req, pp


def settle_record(*, event_id: str, ts_ms: int, payer: str, pay_to: str, amount: int, tx: str,
                  resource: str = "https://api.example/v1/data", version: int = 2, asset: str = BASE_USDC,
                  network: str = "eip155:8453", success: bool = True, error_reason: str | None = None,
                  facilitator: str = "simulator", nonce: str | None = None) -> dict:
    req, pp = _request(version, payer, pay_to, amount, asset, network, resource, nonce or fake_hash(event_id))
    resp = _dump(SettleResponse(success=success, error_reason=error_reason, payer=payer,
                                transaction=tx if success else "", network=req["network"]))
    return {"type": "x402.settle", "id": event_id, "observedAt": iso(ts_ms), "facilitator": facilitator,
            "x402Version": version, "paymentPayload": pp, "paymentRequirements": req, "settleResponse": resp}


def verify_record(*, event_id: str, ts_ms: int, payer: str, pay_to: str, amount: int,
                  resource: str = "https://api.example/v1/data", version: int = 2, asset: str = BASE_USDC,
                  network: str = "eip155:8453", valid: bool = True, invalid_reason: str | None = None,
                  facilitator: str = "simulator") -> dict:
    req, pp = _request(version, payer, pay_to, amount, asset, network, resource, fake_hash(event_id))
    resp = _dump(VerifyResponse(is_valid=valid, invalid_reason=invalid_reason, payer=payer))
    return {"type": "x402.verify", "id": event_id, "observedAt": iso(ts_ms), "facilitator": facilitator,
            "x402Version": version, "paymentPayload": pp, "paymentRequirements": req, "verifyResponse": resp}


def transfer_record(*, ts_ms: int, payer: str, to: str, amount: int, tx: str, log_index: int = 0,
                    chain_id: int = 8453, token: str = BASE_USDC, block_number: int = 1,
                    block_hash: str | None = None, status: str = "pending", authorizer: str | None = None,
                    nonce: str | None = None, confirmations: int = 0) -> dict:
    return {"type": "chain.transfer", "id": chain_transfer_id(chain_id, tx, log_index), "observedAt": iso(ts_ms),
            "chainId": chain_id, "token": token, "from": payer, "to": to, "value": str(amount), "txHash": tx,
            "logIndex": log_index, "blockNumber": block_number,
            "blockHash": block_hash or fake_hash("block", block_number), "blockTime": iso(ts_ms),
            "authorizer": authorizer, "nonce": nonce, "status": status, "confirmations": confirmations}


def progress_record(*, ts_ms: int, block_number: int, chain_id: int = 8453, block_hash: str | None = None,
                    observed_ms: int | None = None, token: str | None = BASE_USDC,
                    read_from: tuple[int, int] | None = None, watches_all: bool | None = None) -> dict:
    """The chain bridge's heartbeat: every confirmed transfer of `token` up to `block_number` (mined at `ts_ms`)
    is out, from block `read_from` = (number, time in ms) on. `token` None, `read_from` None: as a bridge from
    before them (no such field)."""
    rec = {"type": "chain.progress", "id": chain_progress_id(chain_id, block_number),
           "observedAt": iso(ts_ms if observed_ms is None else observed_ms), "chainId": chain_id,
           "blockNumber": block_number, "blockHash": block_hash or fake_hash("block", block_number),
           "blockTime": iso(ts_ms)}
    if token is not None:
        rec["token"] = token
    if read_from is not None:
        rec["readFrom"], rec["readFromTime"] = read_from[0], iso(read_from[1])
    if watches_all is not None:
        rec["watchesAll"] = watches_all
    return rec


_enc = msgspec.json.Encoder()


def encode(record: dict) -> bytes:
    return _enc.encode(record)
