"""Who may write, and how much a request may send.

Tokens are off while ``DORA_API_TOKEN`` is unset (the API then binds to
loopback only, see ``backend.__main__``). With it set, every write endpoint
needs ``Authorization: Bearer <DORA_API_TOKEN>``; a run's register and
telemetry calls also accept that run's own ingest token, which the launcher
hands to the worker it starts. Reads stay open, like the dashboard.

``RequestGuard`` holds the same line however the server was started (plain
``uvicorn --host 0.0.0.0`` skips ``backend.__main__``'s check) and against
web pages the user happens to visit; see its docstring.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.db import Database
from backend.deps import RunId, get_db
from backend.models import Run
from backend.services.jobs import token_hash
from dora_core.contracts.hosts import is_loopback_host

_CHALLENGE = {"WWW-Authenticate": "Bearer"}

# Reads ``Authorization: Bearer <token>`` and declares the scheme in the OpenAPI
# document (/docs gets an Authorize button). It never answers by itself: without
# DORA_API_TOKEN no token is needed, so the checks below decide.
bearer = HTTPBearer(
    auto_error=False,
    description="DORA_API_TOKEN; a run's register and telemetry calls also take that "
    "run's ingest token (DORA_INGEST_TOKEN). Needed only when the API has DORA_API_TOKEN.",
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials is not None else None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def require_writer(request: Request, credentials: Bearer) -> None:
    """Dependency of write endpoints: the API token when one is configured."""
    expected = request.app.state.settings.api_token
    if expected is None:
        return
    token = _token(credentials)
    if token is None:
        raise HTTPException(
            401, "this endpoint needs Authorization: Bearer <DORA_API_TOKEN>", _CHALLENGE
        )
    if not _same(token, expected):
        raise HTTPException(403, "wrong API token", _CHALLENGE)


def require_ingest(
    run_id: RunId, request: Request, db: Annotated[Database, Depends(get_db)], credentials: Bearer
) -> None:
    """Dependency of a run's worker calls: the API token or that run's ingest token."""
    expected = request.app.state.settings.api_token
    if expected is None:
        return
    token = _token(credentials)
    if token is None:
        raise HTTPException(
            401, "this endpoint needs Authorization: Bearer <DORA_INGEST_TOKEN>", _CHALLENGE
        )
    if _same(token, expected):
        return
    with db.reader() as session:
        stored = session.get(Run, run_id)
        digest = stored.ingest_token_hash if stored is not None else None
    if digest is None or not _same(token_hash(token), digest):
        raise HTTPException(403, f"this token may not write to run {run_id}", _CHALLENGE)


Writer = Depends(require_writer)
Ingester = Depends(require_ingest)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class RequestGuard:
    """Refuse, before routing, requests that come from where this API does not serve.

    * Without ``DORA_API_TOKEN`` the API serves this machine only: a request
      from a non-loopback address, or one whose ``Host`` is not a loopback
      name, is 403. The second case is DNS rebinding: a web page whose name
      is pointed at 127.0.0.1 would otherwise be "same origin" with the API.
      Requests without an IP peer (in-process test clients, a Unix socket)
      are local by construction and not checked.
    * A write (any method but GET, HEAD, OPTIONS) that carries an ``Origin``
      header is 403 unless the origin is in ``DORA_CORS_ORIGINS`` or is the
      API's own (its /docs page). Closed CORS only stops a page from reading
      answers; a cross-site POST with a text/plain body needs no preflight
      and would otherwise launch or cancel jobs. Browsers always send
      ``Origin`` on such requests; workers, the dashboard's server and curl
      send none.
    """

    def __init__(self, app: ASGIApp, api_token: str | None, cors_origins: tuple[str, ...]):
        self.app, self.api_token, self.cors_origins = app, api_token, frozenset(cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await _send_json(send, 403, refusal)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> str | None:
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.api_token is None:
            peer = _peer_address(scope)
            if peer is not None and not peer.is_loopback:
                return (
                    f"this API has no DORA_API_TOKEN, so it serves this machine only "
                    f"(request from {peer}); set DORA_API_TOKEN to open it to other machines"
                )
            if peer is not None and host and not is_loopback_host(_host_name(host)):
                return (
                    f"Host {host!r} is not a loopback name and this API has no DORA_API_TOKEN; "
                    "reach it as http://127.0.0.1:<port> or http://localhost:<port>"
                )
        origin = headers.get(b"origin")
        if scope["method"] not in SAFE_METHODS and origin is not None:
            text = origin.decode("latin-1")
            own = f"{scope.get('scheme', 'http')}://{host}"
            if text not in self.cors_origins and text != own:
                return (
                    f"a write from the web page at {text!r} is refused (cross-site request); "
                    "add that origin to DORA_CORS_ORIGINS if it is yours"
                )
        return None


def _peer_address(scope: Scope) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's IP address (IPv4-mapped IPv6 unwrapped), or None when it has none."""
    client = scope.get("client")
    try:
        address = ipaddress.ip_address(client[0]) if client else None
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _host_name(host: str) -> str:
    """``127.0.0.1:8000`` -> ``127.0.0.1``, ``[::1]:8000`` -> ``::1``."""
    try:
        return urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return ""


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: int | str) -> HTTPException:
        return HTTPException(
            413, f"request body of {size} bytes is over the limit of {self.max_bytes} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_json(send, 413, str(self._too_large(int(declared)).detail))
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # FastAPI re-raises HTTPException from body reading: the client gets 413.
                    raise self._too_large(f"more than {self.max_bytes}")
            return message

        await self.app(scope, limited, send)


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
