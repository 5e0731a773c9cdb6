"""A small HTTP client for the telemetry API (docs/protocol.md); httpx, no web framework."""

from __future__ import annotations

from typing import Any

import httpx


class ApiUnavailable(Exception):
    """The API could not take the request now (down, timeout, 5xx, 429): retry later."""


class ApiRejected(Exception):
    """The API answered and refused the request (4xx): retrying the same body will not help."""

    def __init__(self, status: int, detail: Any):
        self.status = status
        self.detail = detail
        super().__init__(f"HTTP {status}: {detail}")


class ApiClient:
    """The three worker calls: create a run, register modules, post a telemetry batch."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
        )

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: dict) -> dict:
        try:
            response = self._http.post(path, json=body)
        except httpx.HTTPError as exc:  # connection refused, reset, timeout, ...
            raise ApiUnavailable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise ApiUnavailable(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text[:500]
            raise ApiRejected(response.status_code, detail)
        try:
            return response.json()
        except ValueError:
            return {}

    def create_run(self, name: str, config: dict) -> int:
        """POST /api/runs -> the new run's id."""
        return int(self._post("/api/runs", {"name": name, "config": config})["id"])

    def register(self, run_id: int, body: dict) -> dict:
        return self._post(f"/api/runs/{run_id}/register", body)

    def post_telemetry(self, run_id: int, body: dict) -> dict:
        return self._post(f"/api/runs/{run_id}/telemetry", body)
