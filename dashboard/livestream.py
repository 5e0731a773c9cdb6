"""Live run pages through the API's server-sent events, relayed by the dashboard.

The browser cannot be assumed to reach the API (under compose it is an
internal host name, and the API token stays on the server), so the dashboard
relays ``GET /api/runs/{id}/stream`` at ``/live/runs/<id>/stream`` behind its
own host check and login. The run page's script (``assets/live.js``) listens
there and, for each notice of a new step or status, sets the page's
``run-notice`` store, which runs the same refresh a poll tick runs: the page
asks the API only when there is something new (at most once per
``DORA_DASH_POLL_MS``), instead of once per tick whether or not anything
changed. docs/benchmarks.md has the measurements.

A relayed stream holds one server thread for as long as the page is open, so
each process relays at most ``DORA_DASH_MAX_STREAMS`` at once; a page turned
away (503), or whose stream breaks, polls as before. ``DORA_DASH_LIVE=poll``
turns the relay off.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import httpx
from flask import Flask, Response, request

from dashboard.api import ApiClient, ApiError, error_from_response

STREAM_RULE = "/live/runs/<int:run_id>/stream"
# How long the relay waits for the API between two chunks: the API sends a keep-alive
# comment every 15 s (stream_keepalive_s), so a longer silence means it is gone.
READ_TIMEOUT_S = 60.0
# A comment line to the browser after this long without a chunk from the API.
HEARTBEAT_S = 2.0


def stream_href(run_id: int) -> str:
    """Where the run page's script listens for the run's notices."""
    return STREAM_RULE.replace("<int:run_id>", str(run_id))


class Relay:
    """Relays a run's progress stream from the API, at most ``slots`` at a time."""

    def __init__(self, client: ApiClient, slots: int):
        self.client = client
        self._slots = threading.BoundedSemaphore(slots)
        self._http = httpx.Client(
            base_url=client.base_url, timeout=httpx.Timeout(10.0, read=READ_TIMEOUT_S)
        )

    def response(self, run_id: int, last_event_id: str | None) -> Response:
        """The API's stream as it arrives, or a plain-text reason (the page then polls)."""
        if not self._slots.acquire(blocking=False):
            return _plain("every live-update slot is taken; this page polls instead", 503)
        try:
            upstream = self._open(run_id, last_event_id)
        except ApiError as err:
            self._slots.release()
            return _plain(err.message, err.status or 502)
        except BaseException:
            self._slots.release()
            raise
        return Response(
            self._relay(upstream),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _open(self, run_id: int, last_event_id: str | None) -> httpx.Response:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        req = self._http.build_request("GET", f"/api/runs/{run_id}/stream", headers=headers)
        try:
            resp = self._http.send(req, stream=True)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach the API at {self.client.base_url} ({exc})") from None
        if not resp.is_success:
            resp.read()
            resp.close()
            raise error_from_response(resp)
        return resp

    def _relay(self, upstream: httpx.Response) -> Iterator[bytes]:
        """Chunks as they come; ends with the API's stream (after the run's final status),
        when the API goes quiet, or when the browser has left.

        A server learns that a client left only when a write to it fails, and
        the API may have nothing to say for a long time (a quiet run: one
        keep-alive in 15 s), so a thread reads the API and this generator
        writes a comment line whenever HEARTBEAT_S pass without a chunk: a
        page that was closed gives its slot back within seconds.
        """
        chunks: queue.Queue[bytes | None] = queue.Queue()

        def pump() -> None:
            try:
                for chunk in upstream.iter_raw():
                    chunks.put(chunk)
            except (httpx.HTTPError, OSError, RuntimeError):
                pass  # the API went away, or the relay closed the stream under it
            finally:
                chunks.put(None)

        threading.Thread(target=pump, name=f"relay {upstream.url.path}", daemon=True).start()
        try:
            yield b"retry: 2000\n\n"  # reconnect after 2 s, resuming with Last-Event-ID
            while True:
                try:
                    chunk = chunks.get(timeout=HEARTBEAT_S)
                except queue.Empty:
                    yield b": relay\n\n"
                    continue
                if chunk is None:
                    return
                yield chunk
        finally:
            upstream.close()
            self._slots.release()


def _plain(message: str, status: int) -> Response:
    return Response(message + "\n", status=status, mimetype="text/plain")


def register(server: Flask, client: ApiClient, slots: int) -> Relay:
    relay = Relay(client, slots)
    server.add_url_rule(
        STREAM_RULE,
        "live_stream",
        lambda run_id: relay.response(run_id, request.headers.get("Last-Event-ID")),
    )
    return relay
