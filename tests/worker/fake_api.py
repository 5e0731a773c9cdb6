"""A small real HTTP server speaking the worker's side of docs/protocol.md, for tests.

It stores what the worker sends (run creation, registration, telemetry
batches with seq de-duplication), can go down and come back on the same
port, can fail or hang on purpose, and is always stopped by the test.
Like the real API it hands out a writer token per run it creates (and a new
one on ``POST /api/runs/{id}/token``) and has an instance id: a request
naming another instance in ``X-Dora-Instance`` is refused with 409
``wrong_instance`` before anything is stored. ``token`` makes every request
need that one token (a launched worker's); ``run_tokens_required`` makes a
run's register and telemetry calls need that run's token (401 without).
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dora_core.contracts.wire import INSTANCE_HEADER, WRONG_INSTANCE
from tests.conftest import free_port


class FakeApi:
    def __init__(
        self,
        token: str | None = None,
        instance: str = "fake-instance",
        port: int = 0,
        run_tokens_required: bool = False,
    ):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = token
        self.instance = instance
        self.run_tokens: dict[int, str] = {}  # run id -> the writer token handed out
        self.run_tokens_required = run_tokens_required
        self.lock = threading.Lock()
        self.runs: list[dict] = []  # POST /api/runs bodies
        self.registrations: list[tuple[int, dict]] = []
        self.batches: dict[int, dict] = {}  # seq -> body (stored once)
        self.requests: list[tuple[str, dict]] = []  # every request in arrival order
        self.headers: list[tuple[str, dict]] = []  # (path, headers) of every request
        self.refused: list[tuple[str, str]] = []  # (path, instance) refused as foreign
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
                body = json.loads(self.rfile.read(length) or b"null") or {}
                with api.lock:
                    api.headers.append((self.path, dict(self.headers)))
                claimed = self.headers.get(INSTANCE_HEADER)
                if claimed is not None and claimed != api.instance:
                    with api.lock:
                        api.refused.append((self.path, claimed))
                    detail = f"this API is instance {api.instance}, not {claimed}"
                    answer = {"detail": detail, "code": WRONG_INSTANCE, "instance": api.instance}
                    return self._reply(409, answer)
                if api.token and self.headers.get("Authorization") != f"Bearer {api.token}":
                    return self._reply(401, {"detail": "bad token"})
                status, answer = api.handle(self.path, body, self.headers.get("Authorization"))
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
    def handle(self, path: str, body: dict, auth: str | None = None) -> tuple[int, dict]:
        with self.lock:
            self.requests.append((path, body))
        if path == "/api/runs":
            with self.lock:
                self.runs.append(body)
                run_id = len(self.runs)
                token = self.run_tokens[run_id] = f"run-{run_id}-token-{self.port}"
                created = {"id": run_id, "name": body["name"], "token": token}
                return 201, {**created, "instance": self.instance}
        match = re.fullmatch(r"/api/runs/(\d+)/(register|telemetry|token)", path)
        if not match:
            return 404, {"detail": "not found"}
        run_id, what = int(match.group(1)), match.group(2)
        if what == "token":
            with self.lock:
                token = self.run_tokens[run_id] = f"run-{run_id}-new-token-{self.port}"
            return 200, {"run_id": run_id, "token": token, "instance": self.instance}
        if self.run_tokens_required:
            if auth is None:
                return 401, {"detail": "this endpoint needs Authorization: Bearer <run token>"}
            if auth != f"Bearer {self.run_tokens.get(run_id)}":
                return 403, {"detail": f"this token may not write to run {run_id}"}
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
