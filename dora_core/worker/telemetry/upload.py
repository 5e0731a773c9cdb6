"""Sending the run's final adapter to the API, for a worker whose run dir the API cannot read.

A worker the API launched on a cluster node (its Ray launcher sets
``DORA_UPLOAD_ADAPTER=1``) shares no disk with the API, so the dashboard's
Download adapter has nothing to serve unless the worker sends ``adapter/``:
zipped, ``PUT /api/runs/{id}/adapter`` with the run's writer token. Retried
like the reporter's batches while the API is unreachable (backoff up to
``MAX_BACKOFF_S``, for ``RETRY_FOR_S`` in all); a refusal is final. The
caller turns a failure into a warning, never a failed run: the adapter is
still on the node.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from dora_core.worker.telemetry.client import ApiClient, ApiRejected, ApiUnavailable

RETRY_FOR_S = 60.0
MAX_BACKOFF_S = 5.0
# One request carries the whole adapter: far longer than a telemetry batch may take.
UPLOAD_TIMEOUT_S = 300.0


def zip_folder(folder: Path) -> bytes:
    """The regular files under ``folder`` (symlinks skipped), named relative to it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def upload_adapter(
    client: ApiClient,
    run_id: int,
    folder: Path,
    *,
    retry_for: float = RETRY_FOR_S,
    max_backoff: float = MAX_BACKOFF_S,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Upload ``folder`` as run ``run_id``'s adapter. None once the API has it, else why not."""
    try:
        archive = zip_folder(folder)
    except OSError as exc:
        return f"could not zip {folder}: {exc}"
    deadline = time.monotonic() + retry_for
    backoff = 0.0
    while True:
        try:
            client.put_adapter(run_id, archive)
            return None
        except ApiRejected as exc:  # the same body will not be taken later either
            return f"the API refused it ({exc})"
        except ApiUnavailable as exc:
            backoff = min(max_backoff, max(0.25, backoff * 2))
            if time.monotonic() + backoff > deadline:
                return f"the API did not take it within {retry_for:g} s ({exc})"
            sleep(backoff)
