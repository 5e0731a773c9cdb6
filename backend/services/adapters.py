"""A run's adapter, uploaded by its worker as a zip, unpacked into ``<run dir>/adapter``.

A worker on a cluster node shares no disk with the API (backend.remote), so
after its last step it sends ``adapter/`` here (``PUT /api/runs/{id}/adapter``
with the run's writer token), and Download adapter serves it like a local
worker's. The zip is untrusted input even with a valid token (a token leaks,
a worker is compromised), so before anything is written:

- every entry is a plain file or folder whose path stays inside the target:
  no absolute path or drive, no ``..`` part, no backslash, no symlink or
  other special file (a zip stores a symlink's mode in its external
  attributes; Python's ``extractall`` would write it as a file, others follow it);
- at most ``MAX_ENTRIES`` entries and ``max_bytes`` unpacked in all (the
  uncompressed sizes, which reading then holds each entry to);
- ``adapter_config.json`` at the top, so that the result is an adapter.

The upload is received and unpacked in ``<data dir>/uploads``, file by
file, and the result then replaces the run's ``adapter/`` while the run's
row is locked: a refused or broken upload leaves the run dir as it was.
"""

from __future__ import annotations

import contextlib
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from backend.db import Database
from backend.errors import Invalid
from backend.services.runs import lock_run
from backend.settings import Settings
from dora_core.contracts.rundir import ADAPTER_DIR

MAX_ENTRIES = 1000
REQUIRED_FILE = "adapter_config.json"
_LOC = ("body",)


def entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why this zip entry may not be unpacked into the adapter folder, or None."""
    name = info.filename
    if not name or "\x00" in name:
        return "an entry without a usable name"
    if "\\" in name:
        return f"{name!r}: a backslash in a path (use / between folders)"
    if name.startswith("/") or PureWindowsPath(name).drive:
        return f"{name!r}: an absolute path"
    if ".." in PurePosixPath(name).parts:
        return f"{name!r}: the path leaves the adapter folder (..)"
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        return f"{name!r}: a symbolic link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return f"{name!r}: not a regular file or folder"
    return None


def checked_entries(archive: zipfile.ZipFile, max_bytes: int) -> list[zipfile.ZipInfo]:
    """The archive's entries, each checked (``entry_problem``), the whole within the limits;
    raises Invalid (422) naming the first problem."""
    entries = archive.infolist()
    if len(entries) > MAX_ENTRIES:
        raise Invalid.at(_LOC, f"the zip has {len(entries)} entries; at most {MAX_ENTRIES}")
    for info in entries:
        problem = entry_problem(info)
        if problem:
            raise Invalid.at(_LOC, f"refused zip entry {problem}")
    unpacked = sum(info.file_size for info in entries)
    if unpacked > max_bytes:
        raise Invalid.at(
            _LOC,
            f"the zip unpacks to {unpacked} bytes, over the limit of {max_bytes} "
            "(DORA_MAX_ADAPTER_BYTES)",
        )
    names = {PurePosixPath(info.filename).as_posix() for info in entries if not info.is_dir()}
    if REQUIRED_FILE not in names:
        raise Invalid.at(_LOC, f"not a PEFT adapter: no {REQUIRED_FILE} at the top of the zip")
    return entries


def unpack(archive: zipfile.ZipFile, entries: list[zipfile.ZipInfo], folder: Path) -> list[str]:
    """Write the checked entries under ``folder`` (new files only); the files' names."""
    root = folder.resolve()
    written = []
    for info in entries:
        target = (folder / PurePosixPath(info.filename)).resolve()
        if not target.is_relative_to(root):  # belt and braces after entry_problem
            raise Invalid.at(_LOC, f"refused zip entry {info.filename!r}: outside the folder")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as source, open(target, "xb") as out:
            shutil.copyfileobj(source, out, 1024 * 1024)
        written.append(target.relative_to(root).as_posix())
    return sorted(written)


def staging_dir(settings: Settings) -> Path:
    """Where uploads are received and unpacked before they become a run's adapter: on the
    data dir's disk (a rename away from the run dirs), so a refused upload leaves nothing
    in any run dir."""
    path = settings.data_dir / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def store_adapter(
    db: Database, settings: Settings, run_id: int, upload: Path, max_bytes: int
) -> list[str]:
    """Check the uploaded zip and make it the run's ``adapter/``; returns its files.

    The run's files live in its run dir on the API's disk; a run created by hand
    without one gets ``<data dir>/runs/<id>`` (NotFound when the run is gone).
    """
    fresh = Path(tempfile.mkdtemp(prefix="adapter-", dir=staging_dir(settings)))
    try:
        try:
            with zipfile.ZipFile(upload) as archive:
                files = unpack(archive, checked_entries(archive, max_bytes), fresh)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
            raise Invalid.at(_LOC, f"not a readable zip file: {exc}") from None
        except NotImplementedError as exc:  # a compression method zipfile lacks
            raise Invalid.at(_LOC, f"unsupported zip: {exc}") from None
        with db.writer() as session:
            run = lock_run(session, run_id)  # one swap at a time; NotFound if deleted
            if not run.run_dir:
                run.run_dir = str(settings.runs_dir / str(run_id))
            run_dir = Path(run.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            target = run_dir / ADAPTER_DIR
            old = run_dir / f".{ADAPTER_DIR}-old-{fresh.name}"
            if target.exists():
                target.rename(old)
            shutil.move(fresh, target)
            shutil.rmtree(old, ignore_errors=True)
            session.commit()
        return files
    finally:
        if fresh.exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(fresh)
