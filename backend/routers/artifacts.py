"""The exported PEFT adapter of a run, as a zip."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from backend.deps import ReadSession, RunId
from backend.errors import NotFound
from backend.routers.responses import NOT_FOUND
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
