"""Telemetry ingest through the HTTP API vs raw sqlite3 executemany, side by side.

A synthetic RoBERTa-base run (12 blocks x 6 projections = 72 modules, r' = 12)
streams STEPS steps in batches of BATCH steps, each step with its scores and
masks, a budget point and five scalars, as the worker's reporter sends them.
Three ways to store the same telemetry, interleaved over ROUNDS rounds, each
with a fresh database in the same temp folder (same disk), WAL and
synchronous=NORMAL like the API, one transaction per batch:

  api       POST /api/runs/{id}/telemetry to a real uvicorn (JSON parsing,
            validation, packing, one transaction per batch included);
  per-value sqlite3 executemany of one row per value (run, step, module,
            component, score, mask) plus the budget and scalar rows: the
            straightforward schema for the same data;
  packed    sqlite3 executemany of exactly the rows the API writes (one packed
            row per step, budget and scalar rows): the floor under the API.

Target (issue 5): api >= 0.5 x per-value, the median of the per-round ratios.
Rates are score values per second.

    .venv/bin/python bench/ingest.py [--steps 1000] [--batch 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backend.scorepack import Layout, pack_step  # noqa: E402

SCALAR_KEYS = ("loss", "task_loss", "dem", "lr", "grad_norm")
# A RoBERTa block's six adapted projections, as the worker names their types.
TYPES = (
    *(f"attention.self.{p}" for p in ("query", "key", "value")),
    *(f"{part}.dense" for part in ("attention.output", "intermediate", "output")),
)


def roberta_modules(layers: int = 12, rank: int = 12) -> list[dict]:
    """The module list a RoBERTa-base worker registers."""
    shapes = {"intermediate.dense": [3072, 768], "output.dense": [768, 3072]}
    return [
        {
            "name": f"roberta.encoder.layer.{layer}.{kind}",
            "layer": layer,
            "type": kind,
            "shape": shapes.get(kind, [768, 768]),
            "rank": rank,
        }
        for layer in range(layers)
        for kind in TYPES
    ]


def synthetic_steps(modules: list[dict], steps: int, seed: int = 0) -> Iterator[dict]:
    """Per step: float32-valued scores (as torch's .tolist() gives them) and masks that thin out."""
    rng = np.random.default_rng(seed)
    names = [m["name"] for m in modules]
    rank = modules[0]["rank"]
    for step in range(1, steps + 1):
        scores = rng.random((len(names), rank), dtype=np.float32).tolist()
        keep = 1.0 - 0.33 * min(1.0, step / steps)
        masks = (rng.random((len(names), rank)) < keep).astype(int).tolist()
        yield {
            "step": step,
            "values": dict(zip(names, scores, strict=True)),
            "masks": dict(zip(names, masks, strict=True)),
            "budget": {"step": step, "target": 720, "live": int(keep * 864), "b": 10.0},
            "scalars": {k: float(rng.random()) for k in SCALAR_KEYS},
        }


def batches(modules: list[dict], steps: int, per_batch: int) -> list[list[dict]]:
    all_steps = list(synthetic_steps(modules, steps))
    return [all_steps[i : i + per_batch] for i in range(0, steps, per_batch)]


def batch_body(seq: int, chunk: list[dict]) -> bytes:
    return json.dumps(
        {
            "seq": seq,
            "scores": [
                {"step": s["step"], "values": s["values"], "masks": s["masks"]} for s in chunk
            ],
            "budget": [s["budget"] for s in chunk],
            "scalars": [{"step": s["step"], "values": s["scalars"]} for s in chunk],
        }
    ).encode()


@contextmanager
def api_server(data_dir: Path, port: int, database_url: str = "") -> Iterator[str]:
    """A real uvicorn serving backend.main:app on loopback; stopped on exit. Its database
    is ``database_url``, or SQLite in ``data_dir`` when that is empty."""
    env = {**os.environ, "DORA_DATA_DIR": str(data_dir), "DORA_API_PORT": str(port)}
    for key in ("DATABASE_URL", "DORA_API_TOKEN", "DORA_API_URL"):
        env.pop(key, None)
    if database_url:
        env["DATABASE_URL"] = database_url
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "backend.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the API did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def time_api(folder: Path, modules: list[dict], bodies: list[bytes]) -> float:
    with api_server(folder, free_port()) as url, httpx.Client(base_url=url, timeout=60) as http:
        created = http.post(
            "/api/runs",
            json={"name": "bench", "config": {"model": "minilm", "dataset": "rt-snippets"}},
        ).json()
        run_id = created["id"]
        http.headers["Authorization"] = f"Bearer {created['token']}"  # the run's writer token
        http.post(f"/api/runs/{run_id}/register", json={"modules": modules}).raise_for_status()
        headers = {"content-type": "application/json"}
        start = time.perf_counter()
        for body in bodies:
            resp = http.post(f"/api/runs/{run_id}/telemetry", content=body, headers=headers)
            if resp.status_code != 200:
                raise RuntimeError(resp.text[:500])
        return time.perf_counter() - start


def _sqlite(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def _side_rows(chunk: list[dict]) -> tuple[list[tuple], list[tuple]]:
    budget = [
        (1, s["step"], s["budget"]["target"], s["budget"]["live"], s["budget"]["b"]) for s in chunk
    ]
    scalars = [(1, k, s["step"], v) for s in chunk for k, v in s["scalars"].items()]
    return budget, scalars


def _time_inserts(
    conn: sqlite3.Connection, score_sql: str, prepared: list[tuple[list, list, list]]
) -> float:
    """Seconds to insert every prepared batch (score rows, budget, scalars), one
    transaction each, as the API commits them; the connection is closed after."""
    start = time.perf_counter()
    for scores, budget, scalars in prepared:
        conn.execute("BEGIN")
        conn.executemany(score_sql, scores)
        conn.executemany("INSERT INTO budget VALUES (?, ?, ?, ?, ?)", budget)
        conn.executemany("INSERT INTO scalars VALUES (?, ?, ?, ?)", scalars)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


def time_per_value(path: Path, chunks: list[list[dict]]) -> float:
    conn = _sqlite(path)
    conn.executescript(
        "CREATE TABLE score_values (run_id INT, step INT, module INT, component INT, score REAL, mask INT);"
        "CREATE TABLE budget (run_id INT, step INT, target INT, live INT, b REAL);"
        "CREATE TABLE scalars (run_id INT, key TEXT, step INT, value REAL);"
    )
    prepared = []
    for chunk in chunks:
        values = [
            (1, s["step"], m, c, score, mask)
            for s in chunk
            for m, (scores, masks) in enumerate(
                zip(s["values"].values(), s["masks"].values(), strict=True)
            )
            for c, (score, mask) in enumerate(zip(scores, masks, strict=True))
        ]
        prepared.append((values, *_side_rows(chunk)))
    return _time_inserts(conn, "INSERT INTO score_values VALUES (?, ?, ?, ?, ?, ?)", prepared)


def time_packed(path: Path, layout: Layout, chunks: list[list[dict]]) -> float:
    conn = _sqlite(path)
    conn.executescript(
        "CREATE TABLE score_steps (run_id INT, step INT, scores BLOB, masks BLOB, PRIMARY KEY (run_id, step));"
        "CREATE TABLE budget (run_id INT, step INT, target INT, live INT, b REAL, PRIMARY KEY (run_id, step)) WITHOUT ROWID;"
        "CREATE TABLE scalars (run_id INT, key TEXT, step INT, value REAL, PRIMARY KEY (run_id, key, step)) WITHOUT ROWID;"
    )
    prepared = [
        (
            [(1, s["step"], *pack_step(layout, s["values"], s["masks"])) for s in chunk],
            *_side_rows(chunk),
        )
        for chunk in chunks
    ]
    return _time_inserts(conn, "INSERT INTO score_steps VALUES (?, ?, ?, ?)", prepared)


def db_bytes(path: Path) -> int:
    """Size of a SQLite database with its WAL folded in."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=10, help="steps per telemetry batch")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    modules = roberta_modules()
    layout = Layout(tuple(m["name"] for m in modules), tuple(m["rank"] for m in modules))
    chunks = batches(modules, args.steps, args.batch)
    bodies = [batch_body(seq, chunk) for seq, chunk in enumerate(chunks)]
    values = args.steps * layout.total
    print(
        f"{args.steps} steps x {len(modules)} modules x {modules[0]['rank']} = {values:,} score values, "
        f"{len(bodies)} batches of {args.batch} steps ({sum(map(len, bodies)) / len(bodies) / 1024:.0f} KiB JSON each)"
    )
    times: dict[str, list[float]] = {"api": [], "per-value": [], "packed": []}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="dora-bench-ingest-") as tmp:
        for r in range(args.rounds):
            folder = Path(tmp) / f"round{r}"
            folder.mkdir()
            files = {
                "api": folder / "api" / "dora.db",
                "per-value": folder / "per_value.db",
                "packed": folder / "packed.db",
            }
            times["api"].append(time_api(folder / "api", modules, bodies))
            times["per-value"].append(time_per_value(files["per-value"], chunks))
            times["packed"].append(time_packed(files["packed"], layout, chunks))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
            sizes = {k: db_bytes(f) for k, f in files.items()}
    rate = {k: values / statistics.median(v) for k, v in times.items()}
    print("\nmedian rates (score values / s):")
    for key, value in rate.items():
        print(f"  {key:<10} {value:>12,.0f}   ({value / layout.total:,.0f} steps/s)")
    print("\ndatabase bytes per score value (after a WAL checkpoint; raw float32 = 4):")
    for key, size in sizes.items():
        print(f"  {key:<10} {size / values:>6.2f}")
    # Each round's timings ran back to back; the median of the per-round ratios is
    # the least sensitive to other work on a shared machine.
    ratios = [b / a for a, b in zip(times["api"], times["per-value"], strict=True)]
    floor = [b / a for a, b in zip(times["api"], times["packed"], strict=True)]
    ratio = statistics.median(ratios)
    verdict = "PASS" if ratio >= 0.5 else "FAIL"
    print(f"\napi / per-value executemany, per round: {', '.join(f'{r:.2f}' for r in ratios)}")
    print(f"  median {ratio:.2f}x (target >= 0.5x) -> {verdict}")
    print(
        f"api / packed executemany: median {statistics.median(floor):.3f}x (the HTTP + JSON share)"
    )
    return 0 if ratio >= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
