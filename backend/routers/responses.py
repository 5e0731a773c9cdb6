"""Error answers shared by the routers' OpenAPI docs."""

from __future__ import annotations

from typing import Any

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
