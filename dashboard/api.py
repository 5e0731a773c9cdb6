"""HTTP client for the telemetry API (docs/protocol.md); the dashboard's only data source.

Every call returns the decoded JSON body or raises :class:`ApiError`, whose
message is fit to show a person as it is (the API's own ``detail`` when it
gave one, or what went wrong with the connection). The dashboard never
imports ``backend``: it may run on another machine.
"""

from __future__ import annotations

import threading
from typing import Any, TypedDict

import httpx

from dashboard.settings import DashboardSettings


class Method(TypedDict):
    """One training method as ``GET /api/methods`` describes it."""

    name: str
    prunes: bool  # components are scored and removed while training (a budget curve)
    adapter: bool  # trains an adapter (False: every weight, so no ranks to show)
    description: str


# /api/methods per API base URL: it never changes while a process runs, so it is
# fetched once (a failed fetch is not kept: the next call asks again)
_METHODS: dict[str, dict[str, Method]] = {}
_METHODS_LOCK = threading.Lock()


class ApiError(Exception):
    """A failed API call. ``status`` is None when the API could not be reached."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        field_errors: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        # 422 answers: field name -> message, for showing next to form inputs
        self.field_errors = field_errors or {}

    @property
    def unreachable(self) -> bool:
        return self.status is None


def _field_of(loc: list[Any]) -> str:
    """The job-config field a validation error points at ('' for the body as a whole)."""
    parts = [str(p) for p in loc if p not in ("body", "__root__")]
    return parts[0] if parts else ""


def error_from_response(resp: httpx.Response) -> ApiError:
    """Turn a non-2xx answer into an ApiError carrying the API's own words."""
    try:
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    field_errors: dict[str, str] = {}
    if isinstance(detail, list):
        lines = []
        for item in detail:
            if not isinstance(item, dict):
                lines.append(str(item))
                continue
            field = _field_of(list(item.get("loc") or []))
            msg = str(item.get("msg", item))
            if field:
                # two problems with one field: show both
                field_errors[field] = (
                    f"{field_errors[field]}; {msg}" if field in field_errors else msg
                )
            lines.append(f"{field}: {msg}" if field else msg)
        message = "; ".join(lines) or resp.reason_phrase
    elif detail:
        message = str(detail)
    else:
        message = resp.text.strip()[:300] or resp.reason_phrase
    return ApiError(f"{message} (HTTP {resp.status_code})", resp.status_code, field_errors)


def _params(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


class ApiClient:
    """Typed wrappers over the endpoints of docs/protocol.md.

    ``base_url`` defaults to ``DORA_API_URL`` and ``token`` to ``DORA_API_TOKEN``
    (``dashboard.settings``); the token is sent as a bearer token on write calls
    only, which is where the API asks for it.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
    ):
        if not base_url or token is None:
            settings = DashboardSettings()
            base_url = base_url or settings.api_url
            token = settings.api_token if token is None else token
        self.base_url = base_url.rstrip("/")
        self.token = token or None
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    # --- plumbing ---
    def _headers(self, write: bool) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if write and self.token else {}

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        write: bool = False,
    ) -> Any:
        try:
            resp = self._http.request(
                method, f"/api{path}", params=params, json=json, headers=self._headers(write)
            )
        except httpx.TimeoutException:
            raise ApiError(f"the API at {self.base_url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the API at {self.base_url} ({exc})") from None
        if not resp.is_success:
            raise error_from_response(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ApiError(
                f"the API answered {method} {path} with something that is not JSON",
                resp.status_code,
            ) from None

    # --- health, presets, schema ---
    def health(self) -> dict:
        return self._request("GET", "/health")

    def presets(self) -> list[dict]:
        return self._request("GET", "/presets")

    def job_schema(self) -> dict:
        return self._request("GET", "/jobs/schema")

    def methods(self) -> dict[str, Method]:
        """The training methods by name, in the API's order: which prune, which train
        an adapter. Fetched once per API for the life of the process."""
        with _METHODS_LOCK:
            known = _METHODS.get(self.base_url)
        if known is None:
            known = {m["name"]: m for m in self._request("GET", "/methods")}
            with _METHODS_LOCK:
                _METHODS[self.base_url] = known
        return dict(known)

    # --- runs ---
    def runs(self, status: str | None = None, limit: int = 100, offset: int = 0) -> dict:
        return self._request(
            "GET", "/runs", params=_params(status=status, limit=limit, offset=offset)
        )

    def all_runs(self, status: str | None = None, cap: int = 1000, page: int = 100) -> list[dict]:
        """Every run (newest first, as the API orders them), up to ``cap``."""
        items: list[dict] = []
        while len(items) < cap:
            chunk = self.runs(status=status, limit=page, offset=len(items))
            items.extend(chunk["items"])
            if not chunk["items"] or len(items) >= chunk["total"]:
                break
        return items[:cap]

    def run(self, run_id: int) -> dict:
        return self._request("GET", f"/runs/{run_id}")

    def delete_run(self, run_id: int) -> None:
        self._request("DELETE", f"/runs/{run_id}", write=True)

    def modules(self, run_id: int) -> list[dict]:
        return self._request("GET", f"/runs/{run_id}/modules")

    def steps(self, run_id: int) -> list[int]:
        return self._request("GET", f"/runs/{run_id}/steps")["steps"]

    def rank_matrix(self, run_id: int, step: int | None = None) -> dict:
        return self._request("GET", f"/runs/{run_id}/rank-matrix", params=_params(step=step))

    def scores(
        self,
        run_id: int,
        module: str | None = None,
        layer: int | None = None,
        max_points: int = 500,
        since_step: int | None = None,
    ) -> dict:
        return self._request(
            "GET",
            f"/runs/{run_id}/scores",
            params=_params(
                module=module, layer=layer, max_points=max_points, since_step=since_step
            ),
        )

    def budget(self, run_id: int, since_step: int | None = None) -> dict:
        return self._request("GET", f"/runs/{run_id}/budget", params=_params(since_step=since_step))

    def scalar_keys(self, run_id: int) -> list[str]:
        return self._request("GET", f"/runs/{run_id}/scalars/keys")

    def scalars(
        self,
        run_id: int,
        keys: list[str],
        max_points: int = 1000,
        since_step: int | None = None,
    ) -> dict[str, dict]:
        """``{key: {"steps": [...], "values": [...]}}`` for the keys that have data."""
        if not keys:
            return {}
        body = self._request(
            "GET",
            f"/runs/{run_id}/scalars",
            params=_params(keys=",".join(keys), max_points=max_points, since_step=since_step),
        )
        return body["series"]

    def events(
        self,
        run_id: int,
        kind: str | None = None,
        since_step: int | None = None,
        limit: int | None = None,
    ) -> list[dict]:
        """Oldest first; with ``limit``, only the latest that many."""
        return self._request(
            "GET",
            f"/runs/{run_id}/events",
            params=_params(kind=kind, since_step=since_step, limit=limit),
        )

    def samples(self, run_id: int, step: int | None = None) -> dict:
        """A generative run's generated dev samples: ``{"step", "steps", "samples"}`` of the
        latest generating evaluation, or of ``step``."""
        return self._request("GET", f"/runs/{run_id}/samples", params=_params(step=step))

    # --- jobs ---
    def submit_job(self, config: dict) -> dict:
        return self._request("POST", "/jobs", json=config, write=True)

    def cancel_job(self, run_id: int) -> dict:
        return self._request("POST", f"/jobs/{run_id}/cancel", write=True)

    def job_log(self, run_id: int, tail: int = 200) -> list[str]:
        return self._request("GET", f"/jobs/{run_id}/log", params={"tail": tail})["lines"]

    def adapter_zip(self, run_id: int) -> bytes:
        """The exported PEFT adapter as a zip (small: megabytes, read whole)."""
        try:
            resp = self._http.get(f"/api/runs/{run_id}/adapter.zip")
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the API at {self.base_url} ({exc})") from None
        if not resp.is_success:
            raise error_from_response(resp)
        return resp.content
