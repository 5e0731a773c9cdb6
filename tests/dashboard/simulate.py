"""A worker's telemetry with known numbers, posted to the real API over HTTP.

The run has 3 layers x 2 module types (L = 6 modules), r' = 6, b(T) = 4 and
T = 40 steps; scores are reported every 5 steps. Module m keeps the first
``LIVE[step][m]`` components, so every cell of every rank matrix is known in
advance (the tests compare against these tables, not against the API).
"""

from __future__ import annotations

import httpx

TYPES = ["attention.self.query", "attention.self.value"]
LAYERS = [0, 1, 2]
R = 6
TARGET_RANK = 4
TOTAL_STEPS = 40
STEPS = [0, 5, 10, 15, 20, 25, 30, 35, 40]
MODULES = [f"encoder.layer.{layer}.{t}" for layer in LAYERS for t in TYPES]  # layer-major
# live components per module (in MODULES order) at each reported step
LIVE = {
    0: [6, 6, 6, 6, 6, 6],
    5: [6, 6, 6, 6, 6, 6],
    10: [6, 5, 6, 5, 6, 5],
    15: [6, 4, 5, 3, 5, 4],
    **{s: [6, 3, 5, 2, 5, 3] for s in (20, 25, 30, 35, 40)},
}
LOSS = {s: round(1.0 / (1 + s / 10), 4) for s in STEPS}
EVAL = {20: 0.7, 40: 0.8}


def live_matrix(step: int) -> list[list[int]]:
    """LIVE at a step as layers x types (what /rank-matrix should answer)."""
    live = LIVE[step]
    return [live[i * len(TYPES) : (i + 1) * len(TYPES)] for i in range(len(LAYERS))]


def _scores(step: int) -> dict:
    # component i's smoothed score: (R - i) / 21, plus a small step trend
    values = {m: [(R - i) / 21 + step / 1000 for i in range(R)] for m in MODULES}
    masks = {m: [1 if i < LIVE[step][k] else 0 for i in range(R)] for k, m in enumerate(MODULES)}
    return {"step": step, "values": values, "masks": masks}


def _batch(seq: int, steps: list[int], finish: bool) -> dict:
    events = [
        {"step": s, "kind": "prune", "message": f"pruned to {sum(LIVE[s])} live"}
        for s in steps
        if s in (10, 15, 20)
    ]
    events += [
        {"step": s, "kind": "eval", "message": f"accuracy {EVAL[s]}"} for s in steps if s in EVAL
    ]
    if finish:
        events.append({"step": steps[-1], "kind": "finished", "message": "done"})
    return {
        "seq": seq,
        "scores": [_scores(s) for s in steps],
        "budget": [
            {"step": s, "target": sum(LIVE[s]), "live": sum(LIVE[s]), "b": sum(LIVE[s]) / 6}
            for s in steps
        ],
        "scalars": [
            {
                "step": s,
                "values": {"loss": LOSS[s], **({"eval/accuracy": EVAL[s]} if s in EVAL else {})},
            }
            for s in steps
        ],
        "events": events,
    }


class SimulatedRun:
    """Create a run, register its modules, then post telemetry in parts."""

    def __init__(self, api: str, name: str = "simulated dora", method: str = "dora"):
        self.http = httpx.Client(base_url=api, timeout=10.0)
        config = {
            "model": "minilm",
            "dataset": "rt-snippets",
            "method": method,
            "target_rank": TARGET_RANK,
            "init_rank": R,
            "max_steps": TOTAL_STEPS,
        }
        resp = self.http.post("/api/runs", json={"name": name, "config": config})
        resp.raise_for_status()
        self.id: int = resp.json()["id"]
        # The run's writer token: its register and telemetry calls send it, as a worker does.
        self.http.headers["Authorization"] = f"Bearer {resp.json()['token']}"
        self.seq = 0
        resp = self.http.post(
            f"/api/runs/{self.id}/register",
            json={
                "modules": [
                    {
                        "name": m,
                        "layer": LAYERS[k // 2],
                        "type": TYPES[k % 2],
                        "shape": [32, 32],
                        "rank": R,
                    }
                    for k, m in enumerate(MODULES)
                ],
                "total_steps": TOTAL_STEPS,
                "init_rank": R,
                "target_rank": TARGET_RANK,
                "params": {"adapter": 6 * R * (32 + 32 + 1), "head": 66, "total": 100_000},
            },
        )
        resp.raise_for_status()

    def post(self, steps: list[int], finish: bool = False) -> None:
        resp = self.http.post(
            f"/api/runs/{self.id}/telemetry", json=_batch(self.seq, steps, finish)
        )
        resp.raise_for_status()
        self.seq += 1

    def complete(self) -> SimulatedRun:
        self.post(STEPS, finish=True)
        return self
