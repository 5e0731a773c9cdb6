"""Who may write, and how much a request may send.

Tokens are off while ``DORA_API_TOKEN`` is unset (the API then binds to
loopback only, see ``backend.__main__``). With it set, every write endpoint
needs ``Authorization: Bearer <DORA_API_TOKEN>``; a run's register and
telemetry calls also accept that run's own ingest token, which the launcher
hands to the worker it starts. Reads stay open, like the dashboard.
"""

from __future__ import annotations

import hmac
import json
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.db import Database
from backend.deps import RunId, get_db
from backend.models import Run
from backend.services.jobs import token_hash

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def require_writer(request: Request) -> None:
    """Dependency of write endpoints: the API token when one is configured."""
    expected = request.app.state.settings.api_token
    if expected is None:
        return
    token = _bearer(request)
    if token is None:
        raise HTTPException(
            401, "this endpoint needs Authorization: Bearer <DORA_API_TOKEN>", _CHALLENGE
        )
    if not _same(token, expected):
        raise HTTPException(403, "wrong API token", _CHALLENGE)


def require_ingest(
    run_id: RunId, request: Request, db: Annotated[Database, Depends(get_db)]
) -> None:
    """Dependency of a run's worker calls: the API token or that run's ingest token."""
    expected = request.app.state.settings.api_token
    if expected is None:
        return
    token = _bearer(request)
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
