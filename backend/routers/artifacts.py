"""The exported PEFT adapter of a run, as a zip: downloaded, or uploaded by a remote worker."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from backend.deps import DB, AppSettings, ReadSession, RunId
from backend.errors import NotFound
from backend.routers.responses import NOT_FOUND, UNPROCESSABLE, WRITE_AUTH
from backend.schemas import AdapterStored
from backend.security import Ingester
from backend.services.adapters import staging_dir, store_adapter
from backend.services.runs import get_run, has_adapter

router = APIRouter(prefix="/runs", tags=["artifacts"])


def zip_folder(folder: Path) -> bytes:
    """The regular files under ``folder``; symlinks are skipped, so nothing outside leaks."""
    root = folder.resolve()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            if path.resolve().is_relative_to(root):
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


@router.get(
    "/{run_id}/adapter.zip",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}}}, **NOT_FOUND},
)
def adapter_zip(run_id: RunId, session: ReadSession) -> Response:
    """``adapter/`` of the run dir (adapter_config.json, adapter_model.safetensors)."""
    run = get_run(session, run_id)
    if not has_adapter(run):
        raise NotFound(f"run {run_id} has no exported adapter yet (status {run.status})")
    return Response(
        zip_folder(Path(run.run_dir) / "adapter"),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="run-{run_id}-adapter.zip"'},
    )


@router.put(
    "/{run_id}/adapter",
    dependencies=[Ingester],
    responses={
        **WRITE_AUTH,
        **NOT_FOUND,
        **UNPROCESSABLE,
        413: {"description": "The zip is over DORA_MAX_ADAPTER_BYTES (1 GiB by default)"},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_adapter(
    run_id: RunId, request: Request, db: DB, settings: AppSettings
) -> AdapterStored:
    """A worker's final adapter folder as a zip (the run's writer token), for workers that
    share no disk with the API (a Ray cluster): it becomes the run's ``adapter/``, replacing
    any before it, and Download adapter serves it. Entries that would land outside the
    folder (``..``, absolute paths, symlinks) are refused with 422, and nothing changes."""
    limit = settings.max_adapter_bytes
    staging = await run_in_threadpool(staging_dir, settings)
    with tempfile.NamedTemporaryFile(dir=staging, prefix="upload-", suffix=".zip") as f:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(
                    413,
                    f"the adapter zip is over the limit of {limit} bytes (DORA_MAX_ADAPTER_BYTES)",
                )
            await run_in_threadpool(f.write, chunk)
        f.flush()
        files = await run_in_threadpool(store_adapter, db, settings, run_id, Path(f.name), limit)
    return AdapterStored(files=files, bytes=size)
