"""The dashboard's relay of a run's event stream, and the run page's side of it, against the
real API fed known telemetry (``simulate.py``)."""

from __future__ import annotations

import flask
import pytest
from dash import no_update

from dashboard import livestream
from dashboard.api import ApiClient
from dashboard.pages import run
from tests.conftest import free_port
from tests.dashboard.simulate import SimulatedRun

pytestmark = pytest.mark.slow


def _server(client: ApiClient, slots: int = 2) -> flask.Flask:
    server = flask.Flask("relay-test")
    livestream.register(server, client, slots)
    return server


def test_the_relay_passes_the_api_stream_through_and_frees_its_slot(
    api_url: str, client: ApiClient
) -> None:
    sim = SimulatedRun(api_url).complete()
    web = _server(client, slots=1).test_client()
    for _ in range(2):  # one slot: the first stream must have given it back
        resp = web.get(livestream.stream_href(sim.id))
        assert resp.status_code == 200
        assert resp.mimetype == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        body = resp.get_data(as_text=True)
        # the API ends a finished run's stream after its final notice; the relay with it
        assert body == (
            'retry: 2000\n\nevent: progress\nid: 40\ndata: {"step": 40, "status": "completed"}\n\n'
        )


def test_the_relay_answers_with_the_reason_when_it_cannot_stream(
    api_url: str, client: ApiClient
) -> None:
    missing = _server(client).test_client().get(livestream.stream_href(999_999))
    assert missing.status_code == 404 and "run 999999 not found" in missing.get_data(as_text=True)
    full = _server(client, slots=0).test_client().get(livestream.stream_href(1))
    assert full.status_code == 503 and "polls" in full.get_data(as_text=True)
    gone = ApiClient(f"http://127.0.0.1:{free_port()}", token="")
    down = _server(gone).test_client().get(livestream.stream_href(1))
    assert down.status_code == 502 and "cannot reach the API" in down.get_data(as_text=True)


def test_a_live_run_page_follows_the_stream_and_an_ended_one_does_not(
    api_url: str, client: ApiClient
) -> None:
    sim = SimulatedRun(api_url)
    sim.post([0, 5])
    live = client.run(sim.id)
    store, notice, marker = run.shell.live_follow(live, 1500, "stream")
    assert store.data == {
        "run": sim.id,
        "url": f"/live/runs/{sim.id}/stream",
        "step": 5,
        "status": "running",
        "gap": 1500,
        "final": ["cancelled", "completed", "failed"],
    }
    assert notice.id == "run-notice" and marker.id == "run-live-follow"
    assert run.shell.live_follow(live, 1500, "poll")[0].data is None
    # after a notice the timer is left alone while the run lives ...
    assert run.shell.poll(client, live, notice=True) == (no_update, no_update, None)
    sim.post([10, 15, 20, 25, 30, 35, 40], finish=True)
    ended = client.run(sim.id)
    assert run.shell.live_follow(ended, 1500, "stream")[0].data is None
    # ... and switched off once the run has ended and its last step is drawn
    new, disabled, _ = run.shell.poll(client, live, notice=True)
    assert new["status"] == "completed" and disabled is no_update  # last steps to draw
    assert run.shell.poll(client, new, notice=True) == (no_update, True, None)
