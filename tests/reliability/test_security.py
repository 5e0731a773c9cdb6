"""Who may do what: the bind address, tokens, per-run ingest tokens, requests from other
machines and from other web sites, body limits, CORS.

Most checks use the app in-process with a chosen peer address and Host
(Starlette's TestClient), the stand-in worker script as the launcher, and a
real SQLite file; ``test_default_server_*`` checks the same over a real
socket with ``python -m backend``. Hosts that must be refused are addresses
no interface here has (TEST-NET 192.0.2.0/24), so a regression fails to
bind instead of exposing anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from backend.main import create_app
from backend.settings import Settings, is_loopback_host
from tests.backend.conftest import MODULES, env_of, row_counts
from tests.conftest import REPO_ROOT, RunTokens, free_port
from tests.reliability.helpers import worker_env

JOB = {"model": "minilm", "dataset": "rt-snippets", "max_steps": 20}
API = "http://127.0.0.1:8000"  # the Host the dashboard and workers use
FROM_ELSEWHERE = ("192.0.2.10", 40000)
EVIL = "http://evil.example"
AS_TEXT = {"content-type": "text/plain;charset=UTF-8"}  # a "simple" request: no preflight


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.8.9.10",
        "localhost",
        "LOCALHOST",
        "localhost.",
        "::1",
        "[::1]",
        "::ffff:127.0.0.1",
    ],
)
def test_loopback_hosts(host: str) -> None:
    assert is_loopback_host(host) and Settings(host=host).is_loopback


@pytest.mark.parametrize(
    "host",
    [
        *("0.0.0.0", "::", "", "0", "192.168.1.5", "10.0.0.1", "::ffff:10.0.0.1"),
        *("127.0.0.1.nip.io", "127.evil.example", "localhost.evil.example", "example.com"),
    ],
)
def test_non_loopback_hosts(host: str) -> None:
    """A name that merely starts with "127." resolves wherever its DNS says."""
    assert not is_loopback_host(host) and not Settings(host=host).is_loopback


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["-m", "backend"], {"DORA_API_HOST": "192.0.2.1"}),
        (["-m", "backend"], {"DORA_API_HOST": "127.0.0.1.invalid"}),
        (["-m", "backend.serve", "--host", "192.0.2.1"], {}),
    ],
    ids=["python -m backend", "a name starting with 127.", "make run (backend.serve)"],
)
def test_every_way_to_serve_refuses_a_public_host_without_a_token(tmp_path, argv, env) -> None:
    ports = {"DORA_API_PORT": str(free_port()), "DORA_DASH_PORT": str(free_port())}
    out = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO_ROOT,
        env=worker_env(DORA_DATA_DIR=str(tmp_path), **ports, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    host = env.get("DORA_API_HOST") or argv[-1]
    assert out.stderr.strip() == (
        f"error: DORA_API_HOST={host} exposes the API beyond this machine; "
        "set DORA_API_TOKEN so that writes need it, or bind 127.0.0.1"
    )


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as the kernel lists them) with a listening socket on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


@pytest.mark.slow
def test_default_server_listens_on_loopback_only_and_refuses_cross_site_writes(tmp_path) -> None:
    """``python -m backend`` with no DORA_API_HOST, over a real socket."""
    from tests.conftest import start_server, stop_server

    port = free_port()
    env = worker_env(DORA_DATA_DIR=str(tmp_path / "data"), DORA_API_PORT=str(port))
    env.pop("DORA_API_HOST", None)
    url = f"http://127.0.0.1:{port}"
    proc = start_server(["-m", "backend"], env, f"{url}/api/health", tmp_path / "api.log")
    try:
        assert _listening(port) == ["0100007F"]  # 127.0.0.1, nothing on other addresses
        with httpx.Client(base_url=url, timeout=30) as http:
            # A page on another site posting a job as text/plain (no preflight). The body
            # is not a valid job, so a regression answers 422 and still trains nothing.
            csrf = http.post(
                "/api/jobs", content=b'{"max_steps": 0}', headers={**AS_TEXT, "Origin": EVIL}
            )
            assert csrf.status_code == 403 and "cross-site" in csrf.json()["detail"]
            rebound = http.get("/api/runs", headers={"Host": f"evil.example:{port}"})
            assert rebound.status_code == 403 and "loopback" in rebound.json()["detail"]
            preflight = http.options(
                "/api/jobs", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"}
            )
            assert "access-control-allow-origin" not in preflight.headers
            big = b'{"name": "' + b"x" * (8 * 1024 * 1024) + b'"}'
            assert http.post("/api/runs", content=big, headers=AS_TEXT).status_code == 413

            def chunks():  # no Content-Length: the limit holds while streaming
                for i in range(0, len(big), 1 << 20):
                    yield big[i : i + (1 << 20)]

            assert http.post("/api/jobs", content=chunks()).status_code == 413
            assert http.get("/api/runs").json()["total"] == 0
    finally:
        stop_server(proc)


# --- the request guard, in-process with a chosen peer and Host ---------------------------------


def _app_client(settings: Settings, launcher, peer=("127.0.0.1", 40000), base=API) -> TestClient:
    return TestClient(create_app(settings, launcher), base_url=base, client=peer)


def test_without_a_token_other_machines_get_nothing(make_settings, stand_in, database_url) -> None:
    """Plain ``uvicorn --host 0.0.0.0`` skips ``python -m backend``'s check; this still holds."""
    settings = make_settings()
    with _app_client(settings, stand_in, peer=FROM_ELSEWHERE) as remote:
        for method, path, body in [
            ("GET", "/api/runs", None),
            ("GET", "/api/health", None),
            ("POST", "/api/jobs", {**JOB, "name": "ok"}),
            ("POST", "/api/runs", {"config": {"model": "minilm", "dataset": "rt-snippets"}}),
        ]:
            resp = remote.request(method, path, json=body)
            assert resp.status_code == 403, (path, resp.text)
            assert "serves this machine only" in resp.json()["detail"]
    assert row_counts(database_url)["runs"] == 0
    assert not settings.runs_dir.exists() or not any(settings.runs_dir.iterdir())
    for peer in (("127.0.0.1", 1), ("127.3.4.5", 1), ("::1", 1), ("::ffff:127.0.0.1", 1)):
        with _app_client(settings, stand_in, peer=peer) as local:
            assert local.get("/api/runs").status_code == 200, peer


@pytest.mark.parametrize(
    ("base", "served"),
    [
        ("http://127.0.0.1:8000", True),
        ("http://localhost:8000", True),
        ("http://[::1]:8000", True),
        ("http://evil.example:8000", False),
        ("http://127.0.0.1.evil.example:8000", False),
    ],
)
def test_without_a_token_a_non_loopback_host_name_is_refused(
    make_settings, stand_in, base, served
) -> None:
    """DNS rebinding: a page whose own name now points at 127.0.0.1 is "same origin"
    with the API for the browser, but its requests name that page's host."""
    with _app_client(make_settings(), stand_in, base=base) as client:
        assert (client.get("/api/runs").status_code == 200) is served


def test_with_a_token_other_machines_read_and_write_with_it(make_settings, stand_in) -> None:
    master = {"Authorization": "Bearer s3cret"}
    with _app_client(
        make_settings(api_token="s3cret"), stand_in, peer=FROM_ELSEWHERE, base="http://dora:8000"
    ) as remote:
        assert remote.get("/api/runs").status_code == 200
        assert (
            remote.post(
                "/api/runs", json={"config": {"model": "minilm", "dataset": "rt-snippets"}}
            ).status_code
            == 401
        )
        assert (
            remote.post(
                "/api/runs",
                json={"config": {"model": "minilm", "dataset": "rt-snippets"}},
                headers=master,
            ).status_code
            == 201
        )


def test_cross_site_writes_are_refused(make_settings, stand_in, settings) -> None:
    """Closed CORS stops a page from reading answers, not from sending a simple POST."""
    with _app_client(make_settings(), stand_in) as client:
        body = json.dumps({**JOB, "name": "ok"}).encode()
        launched = client.post("/api/jobs", content=body, headers={**AS_TEXT, "Origin": EVIL})
        assert launched.status_code == 403
        assert "add that origin to DORA_CORS_ORIGINS" in launched.json()["detail"]
        assert client.get("/api/runs").json()["total"] == 0
        assert not settings.runs_dir.exists() or not any(settings.runs_dir.iterdir())

        run = client.post("/api/jobs", json={**JOB, "name": "sleep"}).json()["run"]
        for origin in (EVIL, "null", f"{API}.evil.example"):
            resp = client.post(f"/api/jobs/{run['id']}/cancel", headers={"Origin": origin})
            assert resp.status_code == 403, origin
            assert (
                client.delete(f"/api/runs/{run['id']}", headers={"Origin": origin}).status_code
                == 403
            )
        assert client.get(f"/api/runs/{run['id']}").json()["status"] == "queued"
        # reads are not writes; the API's own page (/docs) may write
        assert client.get("/api/runs", headers={"Origin": EVIL}).status_code == 200
        mine = client.post(f"/api/jobs/{run['id']}/cancel", headers={"Origin": API})
        assert mine.status_code == 200 and mine.json()["status"] == "cancelled"

    with _app_client(make_settings(cors_origins=("http://dash.local",)), stand_in) as client:
        ok = client.post(
            "/api/runs",
            json={"config": {"model": "minilm", "dataset": "rt-snippets"}},
            headers={"Origin": "http://dash.local"},
        )
        assert ok.status_code == 201
        assert ok.headers["access-control-allow-origin"] == "http://dash.local"
    with _app_client(make_settings(api_token="s3cret"), stand_in) as client:
        forged = client.post(
            "/api/runs",
            json={"config": {"model": "minilm", "dataset": "rt-snippets"}},
            headers={"Origin": EVIL, "Authorization": "Bearer s3cret"},
        )
        assert forged.status_code == 403


# --- per-run ingest tokens ------------------------------------------------------------------


def _token_of(client: TestClient, run_id: int) -> str:
    """The token the launcher put in the (stand-in) worker's environment, from its log."""
    return env_of(client, run_id)["DORA_INGEST_TOKEN"]


def test_a_run_token_writes_its_own_run_and_nothing_else(make_settings, stand_in) -> None:
    settings = make_settings(api_token="master")
    master = {"Authorization": "Bearer master"}
    with TestClient(create_app(settings, stand_in)) as client:
        a, b = (
            client.post("/api/jobs", json={**JOB, "name": "sleep"}, headers=master).json()["run_id"]
            for _ in range(2)
        )
        token_a, token_b = _token_of(client, a), _token_of(client, b)
        assert token_a != token_b and min(len(token_a), len(token_b)) >= 32
        as_a = {"Authorization": f"Bearer {token_a}"}
        assert (
            client.post(
                f"/api/runs/{a}/register", json={"modules": MODULES}, headers=as_a
            ).status_code
            == 200
        )
        assert (
            client.post(f"/api/runs/{a}/telemetry", json={"seq": 0}, headers=as_a).status_code
            == 200
        )
        for method, path, body in [
            ("POST", f"/api/runs/{b}/register", {"modules": MODULES}),
            ("POST", f"/api/runs/{b}/telemetry", {"seq": 0}),
            ("POST", "/api/runs", {"config": {"model": "minilm", "dataset": "rt-snippets"}}),
            ("POST", "/api/jobs", {**JOB, "name": "ok"}),
            ("POST", f"/api/jobs/{a}/cancel", None),
            ("POST", f"/api/jobs/{b}/cancel", None),
            ("DELETE", f"/api/runs/{a}", None),
            ("DELETE", f"/api/runs/{b}", None),
        ]:
            resp = client.request(method, path, json=body, headers=as_a)
            assert resp.status_code == 403, (method, path, resp.text)
        assert client.get(f"/api/runs/{b}").json()["num_modules"] == 0
        assert client.get("/api/runs").json()["total"] == 2

        # Only a digest is stored; the token itself is nowhere in the database file.
        database = Path(settings.database_url.removeprefix("sqlite:///"))
        stored = b"".join(p.read_bytes() for p in database.parent.glob("dora.db*"))
        assert token_a.encode() not in stored and token_b.encode() not in stored
        assert hashlib.sha256(token_a.encode()).hexdigest().encode() in stored

        for run_id in (a, b):
            client.post(f"/api/jobs/{run_id}/cancel", headers=master)
        assert client.delete(f"/api/runs/{a}", headers=master).status_code == 204
        gone = client.post(f"/api/runs/{a}/telemetry", json={"seq": 1}, headers=as_a)
        assert gone.status_code == 403  # a deleted run's token opens nothing


# --- body limits on every write endpoint --------------------------------------------------------


def test_every_write_endpoint_refuses_an_oversized_body(
    make_settings, stand_in, database_url
) -> None:
    with TestClient(create_app(make_settings(max_body_bytes=4096), stand_in)) as client:
        RunTokens.of(client)  # the run's own calls carry its writer token
        run_id = client.post(
            "/api/runs", json={"config": {"model": "minilm", "dataset": "rt-snippets"}}
        ).json()["id"]
        before = row_counts(database_url)
        big = json.dumps(
            {"name": "x" * 5000, "config": {"model": "minilm", "dataset": "rt-snippets"}}
        ).encode()
        writes = [
            ("POST", "/api/runs", True),
            ("POST", f"/api/runs/{run_id}/register", True),
            ("POST", f"/api/runs/{run_id}/telemetry", True),
            ("POST", "/api/jobs", True),
            ("POST", f"/api/jobs/{run_id}/cancel", False),
            ("DELETE", f"/api/runs/{run_id}", False),
        ]
        for method, path, reads_body in writes:
            declared = client.request(
                method, path, content=big, headers={"content-type": "application/json"}
            )
            assert declared.status_code == 413, (path, declared.text)
            assert "over the limit of 4096 bytes" in declared.json()["detail"]
            if reads_body:  # no Content-Length: refused while it streams in
                streamed = client.request(
                    method,
                    path,
                    content=iter([big[:3000], big[3000:]]),
                    headers={"content-type": "application/json"},
                )
                assert streamed.status_code == 413, path
        assert row_counts(database_url) == before
        assert client.get(f"/api/runs/{run_id}").status_code == 200  # not deleted


# --- the dashboard, which acts on the API for whoever drives it -------------------------------


@pytest.mark.parametrize(
    ("host", "served"),
    [
        ("127.0.0.1:8050", True),
        ("localhost:8050", True),
        ("[::1]:8050", True),
        ("dora.lan:8050", True),  # listed in DORA_DASH_ALLOWED_HOSTS below
        ("evil.example:8050", False),
        ("127.0.0.1.evil.example:8050", False),
    ],
)
def test_dashboard_answers_only_under_loopback_or_listed_names(monkeypatch, host, served) -> None:
    """DNS rebinding against the dashboard would drive its job form with its API access."""
    from dashboard.app import create_app as create_dashboard

    monkeypatch.setenv("DORA_DASH_ALLOWED_HOSTS", "dora.lan, other.lan")
    app = create_dashboard(api_url="http://127.0.0.1:9")  # no API needed for these requests
    web = app.server.test_client()
    page = web.get("/", headers={"Host": host})
    callback = web.post("/_dash-update-component", json={}, headers={"Host": host})
    assert (page.status_code == 200) is served
    if not served:
        assert page.status_code == callback.status_code == 403
        assert b"DORA_DASH_ALLOWED_HOSTS" in page.data


def test_dashboard_callbacks_take_no_cross_site_simple_posts() -> None:
    """A page on another site can only send text/plain without a preflight: refused."""
    from dashboard.app import create_app as create_dashboard

    web = create_dashboard(api_url="http://127.0.0.1:9").server.test_client()
    body = '{"output": "page.children", "outputs": {}, "inputs": [], "changedPropIds": []}'
    resp = web.post(
        "/_dash-update-component",
        data=body,
        headers={"Host": "127.0.0.1:8050", "Origin": EVIL, **AS_TEXT},
    )
    assert resp.status_code == 415
