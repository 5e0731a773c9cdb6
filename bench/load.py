"""Load: concurrent simulated workers stream telemetry to one API while a reader polls.

WORKERS threads each play a RoBERTa-base DoRA run (72 modules x r' = 12)
reporting like the worker's reporter: one batch a second holding
STEPS_PER_BATCH optimizer steps (scores and masks of every module, a budget
point and five scalars per step, a pruning event every 10 steps, eval
scalars and an eval event every 50), each batch numbered by ``seq`` and
retried until acknowledged. They all post to one real API (uvicorn over a
SQLite file in a temp folder, or PostgreSQL, bound to 127.0.0.1) for SECONDS. Meanwhile a
reader polls what the dashboard polls, run after run: the rank matrix, the
step list, one layer's score series, the budget curve and the loss/lr
scalars.

Reported: ingest latency (p50/p95/p99/max per batch, client side), query
latency per kind (p50/p95), how late batches got behind their schedule,
and the load average. Then every run is checked row by row against what was
sent, straight from the database: the packed scores (little-endian
float32 in module order) and mask bits of every step, budget points,
scalars, events, and the batch numbers 0..n-1. Exit status 1 if any row
is missing, extra or different.

Bounded: at most 32 workers and 600 s; everything stays on loopback; the
bodies are built before the clock starts, so the load generator's own JSON
encoding does not compete with the API.

    .venv/bin/python bench/load.py [--workers 8] [--seconds 60] [--steps-per-batch 5]
        [--database sqlite|postgresql|both] [--database-url URL]

``--database postgresql`` starts a throwaway PostgreSQL server for the run
(``tests/pgserver.py``: Debian's binaries, PostgreSQL's default durability
settings, removed afterwards); ``both`` runs SQLite and then PostgreSQL with
the same batches. ``--database-url`` points the API at an existing database
instead (its tables are created if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(1, str(REPO))

from ingest import SCALAR_KEYS, api_server, free_port, roberta_modules  # noqa: E402

QUERY_KINDS = ("rank-matrix", "steps", "layer scores", "budget", "scalars")


@dataclass
class Sent:
    """What one simulated worker sent (and expects to find stored)."""

    scores: dict[int, np.ndarray] = field(default_factory=dict)  # step -> float32, module order
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # step -> 0/1, module order
    budget: list[tuple] = field(default_factory=list)  # (step, target, live, b)
    scalars: list[tuple] = field(default_factory=list)  # (key, step, value)
    events: list[tuple] = field(default_factory=list)  # (step, kind, message)


@dataclass
class Worker:
    index: int
    bodies: list[bytes]
    sent: Sent
    run_id: int = 0
    token: str = ""  # the run's writer token (POST /api/runs returns it)
    latencies: list[float] = field(default_factory=list)  # seconds per acknowledged batch
    lateness: list[float] = field(default_factory=list)  # seconds behind schedule at send
    retries: int = 0
    errors: list[str] = field(default_factory=list)


def build_worker(index: int, batches: int, per_batch: int, modules: list[dict]) -> Worker:
    """Precompute the batches of one run (seeded per worker)."""
    rng = np.random.default_rng(1000 + index)
    names = [m["name"] for m in modules]
    rank = modules[0]["rank"]
    sent = Sent()
    bodies = []
    step = 0
    live = len(names) * rank
    for seq in range(batches):
        body: dict = {"seq": seq, "scores": [], "budget": [], "scalars": [], "events": []}
        for _ in range(per_batch):
            step += 1
            scores = rng.random((len(names), rank), dtype=np.float32)
            if step % 10 == 0:
                live = max(len(names) * 8, live - 12)
                body["events"].append(
                    {"step": step, "kind": "prune", "message": f"pruned to {live} live components"}
                )
                sent.events.append((step, "prune", f"pruned to {live} live components"))
            keep = np.zeros(len(names) * rank, dtype=np.int64)
            keep[rng.permutation(len(names) * rank)[:live]] = 1
            masks = keep.reshape(len(names), rank)
            body["scores"].append(
                {
                    "step": step,
                    "values": dict(zip(names, scores.tolist(), strict=True)),
                    "masks": dict(zip(names, masks.tolist(), strict=True)),
                }
            )
            sent.scores[step] = scores.reshape(-1)
            sent.masks[step] = keep
            target = len(names) * 8
            b = round(live / len(names), 4)
            body["budget"].append({"step": step, "target": target, "live": live, "b": b})
            sent.budget.append((step, target, live, b))
            values = {k: float(rng.random()) for k in SCALAR_KEYS}
            if step % 50 == 0:
                values |= {"eval/accuracy": float(rng.random()), "eval/loss": float(rng.random())}
                body["events"].append({"step": step, "kind": "eval", "message": "dev eval"})
                sent.events.append((step, "eval", "dev eval"))
            body["scalars"].append({"step": step, "values": values})
            sent.scalars += [(k, step, v) for k, v in values.items()]
        bodies.append(json.dumps(body).encode())
    return Worker(index, bodies, sent)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_worker(worker: Worker, url: str, start: float, spread: float) -> None:
    """Post batch k at ``start + spread + k`` s (or at once when behind), retrying until 2xx."""
    headers = {"content-type": "application/json", "Authorization": f"Bearer {worker.token}"}
    with httpx.Client(base_url=url, timeout=60) as http:
        for seq, body in enumerate(worker.bodies):
            due = start + spread + seq
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            worker.lateness.append(max(0.0, -wait))
            while True:
                sent_at = time.perf_counter()
                try:
                    resp = http.post(
                        f"/api/runs/{worker.run_id}/telemetry", content=body, headers=headers
                    )
                except httpx.HTTPError as exc:
                    worker.retries += 1
                    worker.errors.append(f"seq {seq}: {type(exc).__name__}")
                    time.sleep(0.25)
                    continue
                if resp.status_code == 200:
                    worker.latencies.append(time.perf_counter() - sent_at)
                    break
                worker.retries += 1
                worker.errors.append(f"seq {seq}: HTTP {resp.status_code} {resp.text[:200]}")
                if resp.status_code < 500 and resp.status_code != 429:
                    break  # refused for good: the check below will report the missing rows
                time.sleep(0.25)


def run_reader(
    url: str, runs: list[int], layers: int, stop: threading.Event, interval: float
) -> dict[str, list[float]]:
    """Poll the dashboard's queries run after run until ``stop``; latencies per kind."""
    timings: dict[str, list[float]] = {kind: [] for kind in QUERY_KINDS}
    rng = random.Random(0)
    with httpx.Client(base_url=url, timeout=60) as http:
        turn = 0
        while not stop.is_set():
            run_id = runs[turn % len(runs)]
            turn += 1
            queries = {
                "rank-matrix": (f"/api/runs/{run_id}/rank-matrix", {}),
                "steps": (f"/api/runs/{run_id}/steps", {}),
                "layer scores": (
                    f"/api/runs/{run_id}/scores",
                    {"layer": rng.randrange(layers), "max_points": 1000},
                ),
                "budget": (f"/api/runs/{run_id}/budget", {}),
                "scalars": (f"/api/runs/{run_id}/scalars", {"keys": "loss,lr", "max_points": 1000}),
            }
            for kind, (path, params) in queries.items():
                began = time.perf_counter()
                http.get(path, params=params).raise_for_status()
                timings[kind].append(time.perf_counter() - began)
            stop.wait(interval)
    return timings


def verify(database_url: str, workers: list[Worker], modules: list[dict]) -> list[str]:
    """Every sent row stored exactly once, read straight from the database."""
    problems: list[str] = []
    width = len(modules) * modules[0]["rank"]
    engine = create_engine(database_url)

    def rows(conn: object, sql: str, run_id: int) -> list[tuple]:
        return [tuple(row) for row in conn.execute(text(sql), {"r": run_id})]

    try:
        with engine.connect() as conn:
            for w in workers:
                r, sent, who = w.run_id, w.sent, f"worker {w.index} (run {w.run_id})"
                stored = rows(
                    conn,
                    "SELECT step, scores, masks FROM score_steps WHERE run_id = :r ORDER BY step",
                    r,
                )
                if [row[0] for row in stored] != sorted(sent.scores):
                    problems.append(
                        f"{who}: stored score steps differ from the {len(sent.scores)} sent"
                    )
                for step, scores, masks in stored:
                    if step not in sent.scores:
                        continue
                    if not np.array_equal(np.frombuffer(bytes(scores), "<f4"), sent.scores[step]):
                        problems.append(f"{who}: scores at step {step} differ")
                    bits = np.unpackbits(np.frombuffer(bytes(masks), np.uint8))[:width]
                    if not np.array_equal(bits, sent.masks[step]):
                        problems.append(f"{who}: masks at step {step} differ")
                budget = rows(
                    conn,
                    "SELECT step, target, live, b FROM budget WHERE run_id = :r ORDER BY step",
                    r,
                )
                if budget != sent.budget:
                    problems.append(
                        f"{who}: budget rows differ ({len(budget)} vs {len(sent.budget)})"
                    )
                # sorted here: a server's collation may order the keys differently
                scalars = sorted(
                    rows(conn, "SELECT key, step, value FROM scalars WHERE run_id = :r", r)
                )
                if scalars != sorted(sent.scalars):
                    problems.append(
                        f"{who}: scalar rows differ ({len(scalars)} vs {len(sent.scalars)})"
                    )
                events = rows(
                    conn, "SELECT step, kind, message FROM events WHERE run_id = :r ORDER BY id", r
                )
                if events != sent.events:
                    problems.append(f"{who}: events differ ({len(events)} vs {len(sent.events)})")
                seqs = [
                    row[0]
                    for row in rows(
                        conn, "SELECT seq FROM ingest_batches WHERE run_id = :r ORDER BY seq", r
                    )
                ]
                if seqs != list(range(len(w.bodies))):
                    problems.append(
                        f"{who}: batch numbers stored {len(seqs)}, sent {len(w.bodies)}"
                    )
    finally:
        engine.dispose()
    return problems


def database_mb(database_url: str, folder: Path) -> float:
    """The database's size on disk: the SQLite files, or PostgreSQL's own count."""
    if database_url.startswith("sqlite"):
        return sum(p.stat().st_size for p in folder.glob("dora.db*")) / 1e6
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
    finally:
        engine.dispose()
    return size / 1e6


def run_once(args: argparse.Namespace, database: str, database_url: str) -> dict:
    """One load run against a fresh API over ``database_url`` (empty: SQLite in a temp
    folder); the result as a dict, its rows checked."""
    modules = roberta_modules()
    print(f"[{database}] building {args.workers} x {args.seconds} batches ...", flush=True)
    workers = [
        build_worker(i, args.seconds, args.steps_per_batch, modules) for i in range(args.workers)
    ]
    batch_kib = statistics.mean(len(b) for w in workers for b in w.bodies) / 1024
    with tempfile.TemporaryDirectory(prefix="dora-load-") as tmp:
        folder = Path(tmp)
        url_of_db = database_url or f"sqlite:///{folder / 'dora.db'}"
        with (
            api_server(folder, free_port(), database_url) as url,
            httpx.Client(base_url=url, timeout=60) as http,
        ):
            for w in workers:
                created = http.post(
                    "/api/runs",
                    json={
                        "name": f"load {w.index}",
                        "config": {"model": "minilm", "dataset": "rt-snippets"},
                    },
                )
                w.run_id, w.token = created.json()["id"], created.json()["token"]
                http.post(
                    f"/api/runs/{w.run_id}/register",
                    json={"modules": modules},
                    headers={"Authorization": f"Bearer {w.token}"},
                ).raise_for_status()
            load_before = os.getloadavg()
            print(
                f"[{database}] {args.workers} workers x {args.steps_per_batch} steps/s, "
                f"{batch_kib:.0f} KiB per batch, for {args.seconds} s; load average "
                f"{load_before[0]:.2f} ...",
                flush=True,
            )
            stop = threading.Event()
            reads: dict[str, list[float]] = {}
            reader = threading.Thread(
                target=lambda: reads.update(
                    run_reader(url, [w.run_id for w in workers], 12, stop, args.poll_interval)
                )
            )
            start = time.monotonic() + 0.5
            threads = [
                threading.Thread(target=run_worker, args=(w, url, start, w.index / args.workers))
                for w in workers
            ]
            reader.start()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - start
            stop.set()
            reader.join()
            load_after = os.getloadavg()
            problems = verify(url_of_db, workers, modules)
        db_mb = database_mb(url_of_db, folder)

    ingest = [x for w in workers for x in w.latencies]
    late = [x for w in workers for x in w.lateness]
    steps = sum(len(w.sent.scores) for w in workers)
    return {
        "database": database,
        "workers": args.workers,
        "seconds": args.seconds,
        "steps_per_batch": args.steps_per_batch,
        "batch_kib": round(batch_kib, 1),
        "wall_s": round(elapsed, 1),
        "batches": len(ingest),
        "steps": steps,
        "steps_per_s": round(steps / elapsed, 1),
        "score_values_per_s": round(steps * len(modules) * modules[0]["rank"] / elapsed),
        "ingest_ms": {
            q: round(1000 * percentile(ingest, p), 1)
            for q, p in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
        },
        "behind_schedule_ms": {
            "p95": round(1000 * percentile(late, 95), 1),
            "max": round(1000 * max(late), 1),
        },
        "query_ms": {
            kind: {
                "n": len(reads.get(kind, [])),
                "p50": round(1000 * percentile(reads.get(kind, []), 50), 1),
                "p95": round(1000 * percentile(reads.get(kind, []), 95), 1),
            }
            for kind in QUERY_KINDS
        },
        "query_ms_all_p95": round(1000 * percentile([x for v in reads.values() for x in v], 95), 1),
        "retries": sum(w.retries for w in workers),
        "errors": [e for w in workers for e in w.errors][:20],
        "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
        "database_mb": round(db_mb, 1),
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--steps-per-batch", type=int, default=5)
    parser.add_argument("--poll-interval", type=float, default=0.25, help="reader pause, s")
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql", "both"),
        default="sqlite",
        help="postgresql: a throwaway server started for the run; both: SQLite, then that",
    )
    parser.add_argument(
        "--database-url", default="", help="an existing database for the API instead (any URL)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if not (1 <= args.workers <= 32 and 1 <= args.seconds <= 600 and args.steps_per_batch >= 1):
        parser.error("--workers 1..32, --seconds 1..600, --steps-per-batch >= 1")

    results = []
    if args.database_url:
        results.append(run_once(args, args.database_url.split(":")[0], args.database_url))
    else:
        if args.database in ("sqlite", "both"):
            results.append(run_once(args, "sqlite", ""))
        if args.database in ("postgresql", "both"):
            from tests.pgserver import PostgresMissing, PostgresServer

            try:
                server = PostgresServer.start(durable=True)
            except PostgresMissing as exc:
                parser.exit(2, f"load.py: error: --database {args.database}: {exc}\n")
            try:
                results.append(run_once(args, "postgresql", server.new_database("load")))
            finally:
                server.stop()
    for result in results:
        print(json.dumps(result, indent=2))
    if args.json:
        body = results[0] if len(results) == 1 else results
        args.json.write_text(json.dumps(body, indent=2) + "\n")
    status = 0
    for result in results:
        if result["problems"]:
            print(
                f"FAILED ({result['database']}): {len(result['problems'])} problems with the "
                "stored rows",
                file=sys.stderr,
            )
            status = 1
        else:
            print(
                f"{result['database']}: every row of {result['steps'] // args.workers} steps x "
                f"{args.workers} runs stored exactly once"
            )
    return status


if __name__ == "__main__":
    sys.exit(main())
