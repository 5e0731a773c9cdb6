"""Shared pieces of the routers: documented error answers, fast JSON bodies."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel

_detail = {
    "application/json": {"schema": {"type": "object", "properties": {"detail": {"type": "string"}}}}
}

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown run", "content": _detail}
}
UNPROCESSABLE: dict[int | str, dict[str, Any]] = {
    422: {"description": "Invalid body or query; `detail[].loc` names the field"}
}
WRITE_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"description": "A token is configured and none was sent", "content": _detail},
    403: {"description": "Wrong token", "content": _detail},
}
TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"description": "Body over the limit (8 MiB by default)", "content": _detail}
}


def json_response(model: BaseModel) -> Response:
    """Serialise in one pass (pydantic-core), skipping FastAPI's validate-then-dump."""
    return Response(model.model_dump_json().encode(), media_type="application/json")
