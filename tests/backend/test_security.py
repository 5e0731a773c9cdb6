"""Who may write, CORS, bind address, settings from the environment."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.main import create_app
from backend.settings import Settings, SettingsError
from tests.backend.conftest import MODULES
from tests.conftest import run_module


@pytest.fixture
def locked(make_settings, stand_in):
    with TestClient(create_app(make_settings(api_token="s3cret"), stand_in)) as client:
        yield client


MASTER = {"Authorization": "Bearer s3cret"}


def test_write_endpoints_need_the_token_when_one_is_set(locked) -> None:
    run_id = locked.post(
        "/api/runs", json={"config": {"model": "minilm", "dataset": "rt-snippets"}}, headers=MASTER
    ).json()["id"]
    writes = [
        ("POST", "/api/runs", {"config": {"model": "minilm", "dataset": "rt-snippets"}}),
        ("POST", f"/api/runs/{run_id}/register", {"modules": MODULES}),
        ("POST", f"/api/runs/{run_id}/telemetry", {"seq": 0}),
        ("POST", "/api/jobs", {"max_steps": 5}),
        ("POST", f"/api/jobs/{run_id}/cancel", None),
        ("DELETE", f"/api/runs/{run_id}", None),
    ]
    for method, path, body in writes:
        missing = locked.request(method, path, json=body)
        assert missing.status_code == 401, (path, missing.text)
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = locked.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403, path
    assert locked.get(f"/api/runs/{run_id}").json()["num_modules"] == 0  # nothing went through
    ok = locked.post(f"/api/runs/{run_id}/register", json={"modules": MODULES}, headers=MASTER)
    assert ok.status_code == 200
    assert locked.delete(f"/api/runs/{run_id}", headers=MASTER).status_code == 204


def test_reads_stay_open_with_a_token(locked) -> None:
    run_id = locked.post(
        "/api/runs", json={"config": {"model": "minilm", "dataset": "rt-snippets"}}, headers=MASTER
    ).json()["id"]
    for path in (
        "/api/health",
        "/api/runs",
        f"/api/runs/{run_id}",
        f"/api/runs/{run_id}/events",
        "/api/presets",
        "/api/jobs/schema",
    ):
        assert locked.get(path).status_code == 200, path


def test_runs_created_by_hand_have_no_ingest_token(locked) -> None:
    """Their worker writes with the API token (it has DORA_API_TOKEN)."""
    run_id = locked.post(
        "/api/runs", json={"config": {"model": "minilm", "dataset": "rt-snippets"}}, headers=MASTER
    ).json()["id"]
    resp = locked.post(
        f"/api/runs/{run_id}/telemetry",
        json={"seq": 0},
        headers={"Authorization": "Bearer anything"},
    )
    assert resp.status_code == 403


def test_cors_is_closed_by_default_and_opens_per_origin(client, make_settings, stand_in) -> None:
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    assert (
        "access-control-allow-origin"
        not in client.get("/api/runs", headers={"Origin": "http://evil.example"}).headers
    )
    assert (
        "access-control-allow-origin" not in client.options("/api/jobs", headers=preflight).headers
    )
    with TestClient(
        create_app(make_settings(cors_origins=("http://dash.local",)), stand_in)
    ) as open_client:
        ok = open_client.get("/api/runs", headers={"Origin": "http://dash.local"})
        assert ok.headers["access-control-allow-origin"] == "http://dash.local"
        other = open_client.get("/api/runs", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_settings_defaults_are_safe(tmp_path) -> None:
    s = Settings.from_env({"DORA_DATA_DIR": str(tmp_path)})
    assert (s.host, s.port, s.api_token, s.cors_origins) == ("127.0.0.1", 8000, None, ())
    assert s.is_loopback and s.max_body_bytes == 8 * 1024 * 1024
    assert s.database_url == f"sqlite:///{tmp_path / 'dora.db'}"
    assert s.model_roots == (tmp_path / "models",) and s.dataset_roots == (tmp_path / "datasets",)
    assert s.api_url == "" and s.configured_url == "http://127.0.0.1:8000"
    wide = Settings.from_env(
        {
            "DORA_API_HOST": "0.0.0.0",
            "DORA_API_PORT": "9000",
            "DORA_MODEL_ROOTS": f"/a{':'}/b",
            "DORA_CORS_ORIGINS": "http://x, http://y",
        }
    )
    assert not wide.is_loopback and wide.configured_url == "http://127.0.0.1:9000"
    assert wide.model_roots == (Path("/a"), Path("/b")) and wide.cors_origins == (
        "http://x",
        "http://y",
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DORA_API_PORT": "http"}, "DORA_API_PORT='http' is not an integer"),
        ({"DORA_API_PORT": "70000"}, "not a TCP port"),
        ({"DORA_MAX_BODY_BYTES": "-5"}, "DORA_MAX_BODY_BYTES='-5' must be positive"),
    ],
)
def test_bad_settings_name_the_variable(env, message) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_serving_beyond_loopback_without_a_token_is_refused(tmp_path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DORA_DATA_DIR": str(tmp_path), "DORA_API_HOST": "0.0.0.0"}
    out = run_module("backend", env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: DORA_API_HOST=0.0.0.0 exposes the API beyond this machine; set DORA_API_TOKEN "
        "so that writes need it, or bind 127.0.0.1"
    ]
    bad = run_module("backend", {**env, "DORA_API_PORT": "x"})
    assert bad.returncode == 2 and bad.stderr.startswith("error: DORA_API_PORT='x'")


def test_settings_ignore_blank_numbers_and_read_no_other_names(tmp_path) -> None:
    s = Settings.from_env(
        {
            "DORA_DATA_DIR": str(tmp_path),
            "DORA_MAX_JOBS": " 3 ",
            "DORA_API_PORT": "  ",
            "DORA_API_TOKEN": "",
            "DORA_DATABASE_URL": "sqlite:///elsewhere.db",  # DATABASE_URL has no prefix
            "DORA_WATCH_INTERVAL_S": "-1",  # not a variable: tests set it
            "dora_max_queued": "1",  # names are case-sensitive
        }
    )
    assert (s.max_jobs, s.port, s.api_token, s.max_queued) == (3, 8000, None, 20)
    assert s.database_url == f"sqlite:///{tmp_path / 'dora.db'}" and s.watch_interval_s == 1.0


def test_the_openapi_document_declares_the_bearer_scheme_of_the_writes(client) -> None:
    """/docs offers an Authorize button, and each write endpoint says it takes the token."""
    document = client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    bearer = [
        name
        for name, scheme in schemes.items()
        if scheme["type"] == "http" and scheme["scheme"].lower() == "bearer"
    ]
    assert len(bearer) == 1, schemes
    writes = {
        ("post", "/api/runs"),
        ("delete", "/api/runs/{run_id}"),
        ("post", "/api/runs/{run_id}/register"),
        ("post", "/api/runs/{run_id}/telemetry"),
        ("post", "/api/runs/{run_id}/token"),
        ("put", "/api/runs/{run_id}/adapter"),
        ("post", "/api/jobs"),
        ("post", "/api/jobs/{run_id}/cancel"),
    }
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            declared = operation.get("security", [])
            if (method, path) in writes:
                assert {bearer[0]: []} in declared, (method, path)
            else:  # reads stay open
                assert not declared, (method, path)
    assert writes <= {(m, p) for p, ops in document["paths"].items() for m in ops}


@pytest.mark.slow
def test_python_m_backend_serves_and_stops_despite_an_open_live_stream(tmp_path) -> None:
    """A dashboard holding a run's SSE stream open must not keep Ctrl-C from stopping the API."""
    import signal
    import threading
    import time

    import httpx

    from tests.conftest import free_port, start_server, stop_server

    port = free_port()
    env = {**os.environ, "DORA_DATA_DIR": str(tmp_path), "DORA_API_PORT": str(port)}
    for key in ("DATABASE_URL", "DORA_API_TOKEN", "DORA_API_HOST"):
        env.pop(key, None)
    url = f"http://127.0.0.1:{port}"
    proc = start_server(["-m", "backend"], env, f"{url}/api/health", tmp_path / "api.log")
    try:
        created = httpx.post(
            f"{url}/api/runs", json={"config": {"model": "minilm", "dataset": "rt-snippets"}}
        ).json()
        run_id, own = created["id"], {"Authorization": f"Bearer {created['token']}"}
        httpx.post(
            f"{url}/api/runs/{run_id}/register", json={"modules": MODULES}, headers=own
        ).raise_for_status()
        first: list[str] = []

        def listen() -> None:
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.stream("GET", f"{url}/api/runs/{run_id}/stream", timeout=30) as resp,
            ):
                for line in resp.iter_lines():
                    first.append(line)

        threading.Thread(target=listen, daemon=True).start()
        deadline = time.monotonic() + 10
        while not any(line.startswith("data:") for line in first):
            assert time.monotonic() < deadline, first
            time.sleep(0.05)
        assert 'data: {"step": null, "status": "running"}' in first
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 15
    finally:
        stop_server(proc)
