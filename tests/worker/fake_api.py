"""A small real HTTP server speaking the worker's side of docs/protocol.md, for tests.

It stores what the worker sends (run creation, registration, telemetry
batches with seq de-duplication), can go down and come back on the same
port, can fail or hang on purpose, and is always stopped by the test.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import free_port


class FakeApi:
    def __init__(self, token: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.lock = threading.Lock()
        self.runs: list[dict] = []  # POST /api/runs bodies
        self.registrations: list[tuple[int, dict]] = []
        self.batches: dict[int, dict] = {}  # seq -> body (stored once)
        self.requests: list[tuple[str, dict]] = []  # every request in arrival order
        self.fail_once: set[int] = set()  # seqs to store, then answer 500 (lost reply)
        self.release = threading.Event()  # cleared: telemetry requests hang until set
        self.release.set()
        self._server: ThreadingHTTPServer | None = None

    # --- control ---
    def start(self) -> FakeApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if api.token and self.headers.get("Authorization") != f"Bearer {api.token}":
                    return self._reply(401, {"detail": "bad token"})
                status, answer = api.handle(self.path, body)
                self._reply(status, answer)

            def _reply(self, status: int, answer: dict):
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- the protocol ---
    def handle(self, path: str, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.requests.append((path, body))
        if path == "/api/runs":
            with self.lock:
                self.runs.append(body)
                return 201, {"id": len(self.runs), "name": body["name"]}
        match = re.fullmatch(r"/api/runs/(\d+)/(register|telemetry)", path)
        if not match:
            return 404, {"detail": "not found"}
        run_id, what = int(match.group(1)), match.group(2)
        if what == "register":
            with self.lock:
                self.registrations.append((run_id, body))
            return 200, {}
        self.release.wait()
        with self.lock:
            seq = body["seq"]
            if seq in self.batches:
                return 200, {"seq": seq, "duplicate": True}
            self.batches[seq] = body
            if seq in self.fail_once:
                self.fail_once.discard(seq)
                return 500, {"detail": "stored, but the reply is lost"}
        return 200, {"seq": seq, "duplicate": False}

    # --- what arrived ---
    def records(self) -> list[dict]:
        """Every stored record, batch by batch in seq order, as metrics.jsonl lines."""
        out = []
        names = {"scores": "scores", "budget": "budget", "scalars": "scalars", "events": "event"}
        with self.lock:
            for seq in sorted(self.batches):
                body = self.batches[seq]
                for key, kind in names.items():
                    out += [{"type": kind, **rec} for rec in body.get(key, [])]
        return out
