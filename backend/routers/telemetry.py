"""Telemetry ingest: one batch per call, all-or-nothing, idempotent by ``seq``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError

from backend.deps import RunId, WriteSession
from backend.errors import Invalid
from backend.routers.responses import NOT_FOUND, TOO_LARGE, UNPROCESSABLE, WRITE_AUTH
from backend.schemas import IngestAck, TelemetryBatch
from backend.security import Ingester
from backend.services.ingest import ingest

router = APIRouter(prefix="/runs", tags=["telemetry"])


async def batch_body(request: Request) -> TelemetryBatch:
    """Parse and validate in one pass in pydantic-core. FastAPI's own path
    (``json.loads``, then validating the Python objects) takes about three
    times as long on a batch of scores, the bulk of the API's ingest work."""
    try:
        return TelemetryBatch.model_validate_json(await request.body())
    except ValidationError as exc:
        raise Invalid.from_pydantic(exc, ("body",)) from None


def document(openapi: dict[str, Any]) -> dict[str, Any]:
    """Put TelemetryBatch (and its records) into the OpenAPI components it is referenced from."""
    schema = TelemetryBatch.model_json_schema(ref_template="#/components/schemas/{model}")
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    components.update(schema.pop("$defs", {}))
    components["TelemetryBatch"] = schema
    return openapi


@router.post(
    "/{run_id}/telemetry",
    dependencies=[Ingester],
    responses={**WRITE_AUTH, **NOT_FOUND, **UNPROCESSABLE, **TOO_LARGE},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/TelemetryBatch"}}
            },
        }
    },
)
def post_telemetry(
    run_id: RunId, batch: Annotated[TelemetryBatch, Depends(batch_body)], session: WriteSession
) -> IngestAck:
    """Store a batch of scores, budget points, scalars and events.

    A ``seq`` already stored answers ``duplicate: true`` and stores nothing.
    Unknown modules, wrong lengths, non-finite scores, bad masks or a step
    that goes back answer 422 and store nothing.
    """
    return ingest(session, run_id, batch)
