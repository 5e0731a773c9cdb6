"""Domain errors raised by the services, and how they become HTTP answers.

Services stay free of FastAPI; main.py installs ``install_handlers``. A 422
keeps FastAPI's own shape (``detail: [{"loc", "msg", "type"}]``) so clients
handle our checks and pydantic's the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)


class NotFound(LookupError):
    """404: the message says what was not found."""


class Conflict(RuntimeError):
    """409: the request is valid but clashes with the run's state."""


class Busy(RuntimeError):
    """429: the server is at a limit right now; the same request may work later."""


class Unavailable(RuntimeError):
    """503: something the answer needs (a cluster's job server) did not answer; retry later."""


class Invalid(ValueError):
    """422: one or more (loc, message[, type]) entries pointing into the request."""

    def __init__(self, errors: Sequence[tuple]):
        self.errors = [
            (tuple(loc), msg, rest[0] if rest else "value_error") for loc, msg, *rest in errors
        ]
        super().__init__("; ".join(msg for _, msg, _ in self.errors))

    @classmethod
    def at(cls, loc: Sequence[str | int], msg: str) -> Invalid:
        return cls([(loc, msg)])

    @classmethod
    def from_pydantic(cls, exc: ValidationError, prefix: tuple[str, ...]) -> Invalid:
        """Pydantic's errors under ``prefix``, without echoing the (possibly huge) input."""
        return cls([((*prefix, *e["loc"]), e["msg"], e["type"]) for e in exc.errors()])

    def detail(self) -> list[dict]:
        return [{"loc": list(loc), "msg": msg, "type": kind} for loc, msg, kind in self.errors]


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotFound)
    async def _not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    async def _conflict(_request: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(Busy)
    async def _busy(_request: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=429)

    @app.exception_handler(Unavailable)
    async def _unavailable(_request: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Invalid)
    async def _invalid(_request: Request, exc: Invalid) -> JSONResponse:
        return JSONResponse({"detail": exc.detail()}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _unprocessable(_request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own 422 without echoing the input: a bad value can be megabytes long,
        or hold a lone surrogate ("\\ud800") that cannot be written as UTF-8 (a 500)."""
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(OperationalError)
    async def _database_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
        """SQLite still locked after the busy timeout, PostgreSQL unreachable: the request
        was rolled back and may simply be repeated (the worker's reporter does)."""
        log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc.orig)
        return JSONResponse(
            {"detail": "the database is busy or unreachable; nothing was stored, retry shortly"},
            status_code=503,
            headers={"Retry-After": "1"},
        )
