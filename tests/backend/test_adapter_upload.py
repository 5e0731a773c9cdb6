"""PUT /api/runs/{id}/adapter: a remote worker's adapter, refused when its zip could escape.

Zips are built by hand here (zipfile.ZipInfo), so that each refused entry is
exactly the one named: a ``..`` path, an absolute path, a symlink entry.
What must hold for a refused upload: 422 (or 413 for the size), nothing
written anywhere under the data dir, the run's earlier adapter untouched.
"""

from __future__ import annotations

import io
import os
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.main import create_app
from tests.backend.conftest import new_run
from tests.conftest import RunTokens

CONFIG = b'{"peft_type": "LORA", "r": 2}'
WEIGHTS = os.urandom(3000)  # incompressible, so the zip is about this size


def make_zip(*entries: tuple[str | zipfile.ZipInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    """A symlink entry as Info-ZIP stores one: mode S_IFLNK in the external attributes,
    the link's target as the data."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def put(client: TestClient, run_id: int, body: bytes | Iterator[bytes], **headers: str):
    return client.put(
        f"/api/runs/{run_id}/adapter",
        content=body,
        headers={"Content-Type": "application/zip", **headers},
    )


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` and its bytes, the database's own files left out."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith("dora.db")
    }


def test_an_uploaded_adapter_is_what_download_adapter_serves(client, settings) -> None:
    run_id = new_run(client)
    assert client.get(f"/api/runs/{run_id}").json()["has_adapter"] is False
    body = make_zip(
        ("adapter_config.json", CONFIG),
        ("adapter_model.safetensors", WEIGHTS),
        ("extra/README.md", b"# notes"),
    )
    resp = put(client, run_id, body)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "files": ["adapter_config.json", "adapter_model.safetensors", "extra/README.md"],
        "bytes": len(body),
    }
    assert client.get(f"/api/runs/{run_id}").json()["has_adapter"] is True
    download = client.get(f"/api/runs/{run_id}/adapter.zip")
    assert download.status_code == 200
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        served = {name: archive.read(name) for name in archive.namelist()}
    assert served == {
        "adapter_config.json": CONFIG,
        "adapter_model.safetensors": WEIGHTS,
        "extra/README.md": b"# notes",
    }
    # A run created by hand had no run dir here: it now has <data>/runs/<id>.
    assert files_under(settings.runs_dir / str(run_id)) == {
        "adapter/" + name: data for name, data in served.items()
    }

    # A second upload replaces the first whole (no file of the first one is left).
    again = put(client, run_id, make_zip(("adapter_config.json", b'{"r": 4}')))
    assert again.status_code == 200, again.text
    assert files_under(settings.runs_dir / str(run_id) / "adapter") == {
        "adapter_config.json": b'{"r": 4}'
    }
    assert list((settings.data_dir / "uploads").iterdir()) == []


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        (("../x", b"escaped"), "'../x': the path leaves the adapter folder"),
        (("extra/../../x", b"escaped"), "the path leaves the adapter folder"),
        (("/tmp/x", b"escaped"), "'/tmp/x': an absolute path"),
        (("C:/x", b"escaped"), "an absolute path"),
        (("..\\x", b"escaped"), "a backslash"),
        (symlink("x", "/etc/passwd"), "'x': a symbolic link"),
        (symlink("extra/link", "../../.."), "'extra/link': a symbolic link"),
    ],
)
def test_zip_entries_that_could_escape_are_refused_and_nothing_is_written(
    client, settings, tmp_path, entry, named
) -> None:
    run_id = new_run(client)
    before = files_under(tmp_path)
    # A valid adapter around the bad entry: the bad entry alone is the reason.
    body = make_zip(("adapter_config.json", CONFIG), entry, ("adapter_model.safetensors", WEIGHTS))
    resp = put(client, run_id, body)
    assert resp.status_code == 422, resp.text
    [error] = resp.json()["detail"]
    assert error["loc"] == ["body"] and named in error["msg"], error
    assert files_under(tmp_path) == before  # no adapter, no escaped file, no leftovers
    assert client.get(f"/api/runs/{run_id}").json()["has_adapter"] is False


def test_a_refused_upload_leaves_the_earlier_adapter_as_it_was(client, settings) -> None:
    run_id = new_run(client)
    assert put(client, run_id, make_zip(("adapter_config.json", CONFIG))).status_code == 200
    bad = make_zip(("adapter_config.json", b"{}"), symlink("adapter_model.safetensors", "/"))
    assert put(client, run_id, bad).status_code == 422
    assert files_under(settings.runs_dir / str(run_id) / "adapter") == {
        "adapter_config.json": CONFIG
    }


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"not a zip at all", "not a readable zip file"),
        (make_zip(("adapter_model.safetensors", WEIGHTS)), "no adapter_config.json"),
        (make_zip(("sub/adapter_config.json", CONFIG)), "no adapter_config.json"),
        (make_zip(*[(f"f{i}", b"") for i in range(1001)]), "1001 entries; at most 1000"),
    ],
)
def test_what_is_not_an_adapter_zip_is_refused(client, body, named) -> None:
    run_id = new_run(client)
    resp = put(client, run_id, body)
    assert resp.status_code == 422, resp.text
    assert named in resp.json()["detail"][0]["msg"]


@pytest.fixture
def small_limits(make_settings, stand_in) -> Iterator[TestClient]:
    """An API whose adapter limit (5000 bytes) is above its body limit (1000 bytes)."""
    settings = make_settings(max_adapter_bytes=5000, max_body_bytes=1000)
    with TestClient(create_app(settings, stand_in)) as client:
        yield RunTokens().install(client)


def test_the_adapter_limit_holds_declared_streamed_and_unpacked(small_limits) -> None:
    client = small_limits
    run_id = new_run(client)
    # Under the adapter limit though over the body limit: the upload has its own limit.
    fits = make_zip(("adapter_config.json", CONFIG), ("adapter_model.safetensors", WEIGHTS))
    assert 1000 < len(fits) <= 5000
    assert put(client, run_id, fits).status_code == 200
    # ... which no other endpoint gets.
    too_big = client.post(f"/api/runs/{run_id}/telemetry", content=b"x" * 1500)
    assert too_big.status_code == 413

    over = make_zip(
        ("adapter_config.json", CONFIG), ("adapter_model.safetensors", os.urandom(6000))
    )
    assert len(over) > 5000
    declared = put(client, run_id, over)  # Content-Length says it: refused before reading
    assert declared.status_code == 413 and "5000" in declared.json()["detail"]
    streamed = put(client, run_id, iter([over[:3000], over[3000:]]))  # chunked, no length
    assert streamed.status_code == 413
    # 1 MB of zeros is a zip of about 1 KB: it is the unpacked size that is over.
    bomb = make_zip(("adapter_config.json", CONFIG), ("adapter_model.safetensors", bytes(10**6)))
    assert len(bomb) < 5000
    unpacked = put(client, run_id, bomb)
    assert unpacked.status_code == 422
    assert "unpacks to 1000029 bytes" in unpacked.json()["detail"][0]["msg"]

    download = client.get(f"/api/runs/{run_id}/adapter.zip")
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:  # still the first one
        assert archive.read("adapter_model.safetensors") == WEIGHTS


def test_only_the_runs_writer_may_upload(client, settings) -> None:
    run_id, other = new_run(client), new_run(client)
    body = make_zip(("adapter_config.json", CONFIG))
    assert put(client, run_id, body, Authorization="").status_code == 401
    other_token = RunTokens.of(client).tokens[other]
    forged = put(client, run_id, body, Authorization=f"Bearer {other_token}")
    assert forged.status_code == 403
    assert put(client, 999, body, Authorization="").status_code == 404
    assert not (settings.runs_dir / str(run_id)).exists()
