"""Who may write, and how much a request may send.

Every run has a writer token: the launcher hands it to the worker it starts
(``DORA_INGEST_TOKEN``), ``POST /api/runs`` returns it to a worker started by
hand. A run's register and telemetry calls need it (or the API token), with
or without ``DORA_API_TOKEN``: the token ties a worker to its run in this
database, so a worker that reaches the wrong API writes nothing. With
``DORA_API_TOKEN`` set, every other write endpoint needs ``Authorization:
Bearer <DORA_API_TOKEN>``; without it they are open to this machine. Reads
stay open, like the dashboard. ``InstanceCheck`` refuses a worker of another
API instance before any of this.

``RequestGuard`` holds the same line however the server was started (plain
``uvicorn --host 0.0.0.0`` skips ``backend.__main__``'s check) and against
web pages the user happens to visit; see its docstring.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.db import Database
from backend.deps import RunId, get_db
from backend.errors import NotFound
from backend.models import Run
from backend.services.runs import token_hash
from dora_core.contracts.hosts import is_loopback_host
from dora_core.contracts.wire import INSTANCE_HEADER, WRONG_INSTANCE

_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_BEARER = "Authorization: Bearer <{}>"

# Reads ``Authorization: Bearer <token>`` and declares the scheme in the OpenAPI
# document (/docs gets an Authorize button). It never answers by itself: the checks
# below decide.
bearer = HTTPBearer(
    auto_error=False,
    description="A run's register and telemetry calls need that run's writer token "
    "(DORA_INGEST_TOKEN, or the token POST /api/runs returned) or DORA_API_TOKEN; other "
    "writes need DORA_API_TOKEN when the API has one.",
)
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials is not None else None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _require(
    credentials: HTTPAuthorizationCredentials | None,
    needs: str,
    accepted: Callable[[str], bool],
    refusal: str,
) -> None:
    """The one token check: no token is 401 (``needs`` says which), a token ``accepted``
    refuses is 403 (``refusal``)."""
    token = _token(credentials)
    if token is None:
        raise HTTPException(401, f"this endpoint needs {needs}", _CHALLENGE)
    if not accepted(token):
        raise HTTPException(403, refusal, _CHALLENGE)


def require_writer(request: Request, credentials: Bearer) -> None:
    """Dependency of write endpoints: the API token when one is configured."""
    expected = request.app.state.settings.api_token
    if expected is not None:
        _require(
            credentials,
            _BEARER.format("DORA_API_TOKEN"),
            lambda t: _same(t, expected),
            "wrong API token",
        )


def require_ingest(
    run_id: RunId, request: Request, db: Annotated[Database, Depends(get_db)], credentials: Bearer
) -> None:
    """Dependency of a run's worker calls: that run's writer token, or the API token when
    one is configured. Always, also without DORA_API_TOKEN: a worker that reaches an API
    it does not belong to must not write into a run that merely has the same id."""
    api_token = request.app.state.settings.api_token
    with db.reader() as session:
        run = session.get(Run, run_id)
    if run is None and credentials is None:
        raise NotFound(f"run {run_id} not found")
    digest = run.ingest_token_hash if run is not None else None  # none: nothing opens it

    def accepted(token: str) -> bool:
        if api_token is not None and _same(token, api_token):
            return True
        return digest is not None and _same(token_hash(token), digest)

    _require(
        credentials,
        _BEARER.format("run token") + ": DORA_INGEST_TOKEN from the launcher, the token "
        "POST /api/runs returned, or a new one from POST /api/runs/{id}/token",
        accepted,
        f"this token may not write to run {run_id}",
    )


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


class InstanceCheck:
    """Refuse a worker that belongs to another API instance (409), before anything else.

    Workers send the instance id of the API that launched them (or created
    their run) in ``X-Dora-Instance``. An API with another database that now
    answers at the same address has its own runs with the same ids; a foreign
    worker's batches must not land in them. The refusal comes before the body
    is read and before any token is checked, so nothing is stored and the
    worker keeps its spool for its own API. Requests without the header
    (readers, the dashboard, a worker started by hand before its run exists)
    are not concerned.
    """

    def __init__(self, app: ASGIApp, state: Any):
        self.app, self.state = app, state  # state.instance_id: set when the database is open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            claimed = dict(scope["headers"]).get(INSTANCE_HEADER.lower().encode())
            own = getattr(self.state, "instance_id", None)
            if claimed is not None and own is not None and claimed.decode("latin-1") != own:
                theirs = claimed.decode("latin-1")
                detail = (
                    f"this API is instance {own}, but this worker belongs to instance {theirs} "
                    "(the API that launched it or created its run): another API with its own "
                    "database answers at this address. Nothing was stored; keep the spool "
                    f"and send it when instance {theirs} is back."
                )
                extra = {"code": WRONG_INSTANCE, "instance": own, "worker_instance": theirs}
                await _send_json(send, 409, detail, **extra)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, declared or streamed.

    ``larger``: (method, path pattern, limit) of the endpoints that take more (a worker's
    adapter upload); the first whose method and path match (``re.fullmatch``) sets the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, larger: Sequence[tuple[str, str, int]] = ()):
        self.app, self.max_bytes = app, max_bytes
        self.larger = [(method, re.compile(path), limit) for method, path, limit in larger]

    def limit(self, scope: Scope) -> int:
        for method, path, limit in self.larger:
            if scope["method"] == method and path.fullmatch(scope["path"]):
                return limit
        return self.max_bytes

    @staticmethod
    def _too_large(size: int | str, limit: int) -> HTTPException:
        return HTTPException(
            413, f"request body of {size} bytes is over the limit of {limit} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_json(send, 413, str(self._too_large(int(declared), limit).detail))
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # FastAPI re-raises HTTPException from body reading: the client gets 413.
                    raise self._too_large(f"more than {limit}", limit)
            return message

        await self.app(scope, limited, send)


async def _send_json(send: Send, status: int, detail: str, **extra: str) -> None:
    body = json.dumps({"detail": detail, **extra}).encode()
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
