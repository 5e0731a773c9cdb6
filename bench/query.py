"""Query latency and storage size for a full-size synthetic run.

Builds a RoBERTa-base-sized run (10,000 steps x 72 modules x 12 components =
8.64M score values, with budget points, five scalars per step, and pruning
events every 10 steps between 15% and 50% of training) through the API's own
ingest code, then asks a real uvicorn for what the dashboard asks:

  rank matrix at a random step, a module's score series downsampled to 1000
  points, a layer's series (6 modules), the loss curve, the step list.

Targets (issue 5): rank matrix and module series p95 < 100 ms; database file
<= 2x the raw float32 bytes of the scores (34.56 MB here).

    .venv/bin/python bench/query.py [--steps 10000] [--samples 100]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest import SCALAR_KEYS, api_server, free_port, roberta_modules, synthetic_steps  # noqa: E402

from backend.db import Database  # noqa: E402
from backend.schemas import RegisterIn, TelemetryBatch  # noqa: E402
from backend.services import ingest, runs  # noqa: E402
from backend.settings import Settings  # noqa: E402
from dora_core.contracts.job import parse_job_config  # noqa: E402


def build_run(settings: Settings, steps: int, per_batch: int = 100) -> int:
    """Fill the database through the ingest service (the code the endpoint runs)."""
    db = Database(settings.database_url)
    db.migrate()
    modules = roberta_modules()
    with db.writer() as session:
        run = runs.new_run(
            parse_job_config({"model": "roberta-base", "dataset": "synthetic", "max_steps": steps}),
            "bench: roberta-base",
        )
        session.add(run)
        session.commit()
        run_id = run.id
    with db.writer() as session:
        runs.register(session, run_id, RegisterIn.model_validate({"modules": modules}))
    t_i, t_end = int(0.15 * steps), int(0.5 * steps)
    generated = synthetic_steps(modules, steps)
    for seq in range(0, steps // per_batch):
        chunk = [next(generated) for _ in range(per_batch)]
        prunes = [s["step"] for s in chunk if t_i <= s["step"] <= t_end and s["step"] % 10 == 0]
        batch = TelemetryBatch.model_validate(
            {
                "seq": seq,
                "scores": [
                    {"step": s["step"], "values": s["values"], "masks": s["masks"]} for s in chunk
                ],
                "budget": [s["budget"] for s in chunk if s["step"] in prunes],
                "scalars": [{"step": s["step"], "values": s["scalars"]} for s in chunk],
                "events": [
                    {"step": p, "kind": "prune", "message": f"pruned at {p}"} for p in prunes
                ],
            }
        )
        with db.writer() as session:
            ingest.ingest(session, run_id, batch)
    with db.engine.connect() as conn:  # fold the WAL into the file before measuring it
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db.dispose()
    return run_id


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[-1]


def measure(http: httpx.Client, paths: list[tuple[str, dict]]) -> list[float]:
    out = []
    for path, params in paths:
        start = time.perf_counter()
        resp = http.get(path, params=params)
        out.append((time.perf_counter() - start) * 1000)
        resp.raise_for_status()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=100, help="requests per query kind")
    args = parser.parse_args()
    rng = random.Random(0)
    modules = roberta_modules()
    names = [m["name"] for m in modules]

    with tempfile.TemporaryDirectory(prefix="dora-bench-query-") as tmp:
        settings = Settings(data_dir=Path(tmp))
        start = time.perf_counter()
        run_id = build_run(settings, args.steps)
        print(f"built {args.steps} steps x 72 x 12 in {time.perf_counter() - start:.0f} s")
        db_file = settings.data_dir / "dora.db"
        raw = args.steps * 72 * 12 * 4
        size = db_file.stat().st_size + sum(
            p.stat().st_size for p in settings.data_dir.glob("dora.db-*")
        )
        print(
            f"database {size / 1e6:.2f} MB for {raw / 1e6:.2f} MB of raw float32 scores: "
            f"{size / raw:.2f}x (target <= 2x)"
        )

        base = f"/api/runs/{run_id}"
        kinds = {
            "rank matrix, random step": [
                (f"{base}/rank-matrix", {"step": rng.randrange(args.steps)})
                for _ in range(args.samples)
            ],
            "module series, 1000 pts": [
                (f"{base}/scores", {"module": rng.choice(names), "max_points": 1000})
                for _ in range(args.samples)
            ],
            "layer series (6), 1000 pts": [
                (f"{base}/scores", {"layer": rng.randrange(12), "max_points": 1000})
                for _ in range(args.samples // 4)
            ],
            "loss curve, 1000 pts": [
                (f"{base}/scalars", {"keys": SCALAR_KEYS[0], "max_points": 1000})
                for _ in range(args.samples // 4)
            ],
            "step list (10k)": [(f"{base}/steps", {}) for _ in range(args.samples // 4)],
        }
        results = {}
        with (
            api_server(settings.data_dir, free_port()) as url,
            httpx.Client(base_url=url, timeout=60) as http,
        ):
            check = http.get(
                f"{base}/scores", params={"module": names[0], "max_points": 1000}
            ).json()
            kept = set(range(int(0.15 * args.steps) // 10 * 10, int(0.5 * args.steps) + 1, 10))
            kept = {s for s in kept if s >= int(0.15 * args.steps)}
            assert len(check["steps"]) <= 1000 and kept <= set(check["steps"]), "pruning steps lost"
            for kind, paths in kinds.items():
                measure(http, paths[:3])  # warm up
                results[kind] = measure(http, paths)
        print(f"\n{'query':<28} {'p50 ms':>8} {'p95 ms':>8}")
        for kind, samples in results.items():
            print(f"{kind:<28} {statistics.median(samples):>8.1f} {p95(samples):>8.1f}")
        ok = (
            p95(results["rank matrix, random step"]) < 100
            and p95(results["module series, 1000 pts"]) < 100
            and size <= 2 * raw
        )
        print(
            f"\ntargets (rank matrix and module series p95 < 100 ms, size <= 2x): {'PASS' if ok else 'FAIL'}"
        )
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
