"""A small HTTP client for the telemetry API (docs/protocol.md); httpx, no web framework."""

from __future__ import annotations

from typing import Any

import httpx

from dora_core.contracts.wire import INSTANCE_HEADER, WRONG_INSTANCE


class ApiUnavailable(Exception):
    """The API could not take the request now (down, timeout, 5xx, 429): retry later."""


class WrongInstance(ApiUnavailable):
    """An API of another instance (another database) answers at this address and refused
    the request before storing anything: not ours, so retry later, in case ours comes back."""

    def __init__(self, detail: Any, api_instance: str | None, ours: str | None):
        self.detail, self.api_instance, self.ours = detail, api_instance, ours
        super().__init__(f"HTTP 409 {WRONG_INSTANCE}: {detail}")


class ApiRejected(Exception):
    """The API answered and refused the request (4xx): retrying the same body will not help."""

    def __init__(self, status: int, detail: Any):
        self.status = status
        self.detail = detail
        super().__init__(f"HTTP {status}: {detail}")


class ApiClient:
    """The worker's calls: create a run, register modules, post a telemetry batch, get a
    new writer token for a resumed run, upload the final adapter. ``token`` is sent as the
    bearer token and ``instance`` (the API instance this worker belongs to) as
    ``X-Dora-Instance``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 10.0,
        instance: str | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0))
        )
        self.token: str | None = None
        self.instance: str | None = None
        self.set_token(token)
        self.set_instance(instance)

    def set_token(self, token: str | None) -> None:
        self.token = token or None
        self._http.headers.pop("Authorization", None)
        if self.token:
            self._http.headers["Authorization"] = f"Bearer {self.token}"

    def set_instance(self, instance: str | None) -> None:
        self.instance = instance or None
        self._http.headers.pop(INSTANCE_HEADER, None)
        if self.instance:
            self._http.headers[INSTANCE_HEADER] = self.instance

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: dict | None) -> dict:
        return self._send("POST", path, json=body)

    def _send(self, method: str, path: str, **content: Any) -> dict:
        """One request; ``content``: httpx's ``json=`` or ``content=`` (+ ``headers=``)."""
        try:
            response = self._http.request(method, path, **content)
        except httpx.HTTPError as exc:  # connection refused, reset, timeout, ...
            raise ApiUnavailable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise ApiUnavailable(f"HTTP {response.status_code}")
        if response.status_code >= 400:
            try:
                answer = response.json()
            except ValueError:
                answer = {"detail": response.text[:500]}
            if not isinstance(answer, dict):
                answer = {"detail": answer}
            if response.status_code == 409 and answer.get("code") == WRONG_INSTANCE:
                raise WrongInstance(answer.get("detail"), answer.get("instance"), self.instance)
            raise ApiRejected(response.status_code, answer.get("detail"))
        try:
            return response.json()
        except ValueError:
            return {}

    def health(self) -> dict:
        """GET /api/health -> ``status``, ``version`` and the API's ``instance`` id."""
        try:
            response = self._http.get("/api/health")
        except httpx.HTTPError as exc:
            raise ApiUnavailable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise ApiUnavailable(f"HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            raise ApiUnavailable("GET /api/health did not answer JSON") from None

    def create_run(self, name: str, config: dict) -> dict:
        """POST /api/runs -> the new run: ``id``, its writer ``token``, the API's ``instance``."""
        return self._post("/api/runs", {"name": name, "config": config})

    def new_token(self, run_id: int) -> dict:
        """POST /api/runs/{id}/token -> ``{"token", "instance"}`` for a resumed run."""
        return self._post(f"/api/runs/{run_id}/token", None)

    def register(self, run_id: int, body: dict) -> dict:
        return self._post(f"/api/runs/{run_id}/register", body)

    def post_telemetry(self, run_id: int, body: dict) -> dict:
        return self._post(f"/api/runs/{run_id}/telemetry", body)

    def put_adapter(self, run_id: int, archive: bytes) -> dict:
        """PUT /api/runs/{id}/adapter: the run's adapter folder as a zip -> its ``files``."""
        return self._send(
            "PUT",
            f"/api/runs/{run_id}/adapter",
            content=archive,
            headers={"Content-Type": "application/zip"},
        )
