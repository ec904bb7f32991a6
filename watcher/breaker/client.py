"""A small synchronous client of the admin API (httpx), used by `spendwatch breaker`."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from watcher.errors import SpendwatchError


class AdminError(SpendwatchError):
    """The admin API refused a request or could not be reached; the message says why and what to do."""


class AdminClient:
    def __init__(self, base_url: str, token: str | None, *, actor: str = "", timeout_s: float = 10.0) -> None:
        headers = {"User-Agent": "spendwatch-cli/1"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if actor:
            headers["X-Spendwatch-Actor"] = actor
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> "AdminClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.ReadTimeout as exc:
            raise AdminError(f"the admin API at {self.base_url} did not answer {method} {path} in time ({exc!r}); "
                             "the daemon may be waiting for Kafka, and a change may still take effect: check "
                             "with `spendwatch breaker show`") from None
        except httpx.HTTPError as exc:
            raise AdminError(f"cannot reach the admin API at {self.base_url}: {exc!r}; is `spendwatch run` "
                             "running, and are admin.host/admin.port (or --url) right?") from None
        if r.status_code == 401:
            raise AdminError("the admin API refused the token (401): set SPENDWATCH_ADMIN_TOKEN or --token to "
                             "the daemon's admin.token")
        if r.status_code >= 400:
            try:
                body = r.json()
                msg = body.get("error", r.text) + (f"; fix: {body['fix']}" if body.get("fix") else "")
            except ValueError:
                msg = r.text
            raise AdminError(f"{method} {path}: HTTP {r.status_code}: {msg}")
        return r.json()

    def agents(self, *, state: str | None = None, limit: int = 50) -> dict:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        return self._call("GET", "/v1/agents", params=params)

    def agent(self, agent: str) -> dict:
        return self._call("GET", f"/v1/agents/{agent}")

    def act(self, action: str, agent: str, reason: str = "", *, key: str | None = None) -> dict:
        """hold | release | approve. The same `key` on a retry acts once."""
        headers = {"Idempotency-Key": key or f"cli-{uuid.uuid4().hex}"}
        return self._call("POST", f"/v1/agents/{agent}/{action}", json={"reason": reason}, headers=headers)

    def set_caps(self, agent: str, caps: dict[str, int] | None, reason: str = "", *, key: str | None = None) -> dict:
        headers = {"Idempotency-Key": key or f"cli-{uuid.uuid4().hex}"}
        return self._call("PUT", f"/v1/agents/{agent}/caps", json={"caps": caps, "reason": reason}, headers=headers)
