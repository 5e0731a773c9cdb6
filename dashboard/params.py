"""Live adapter parameters: what the pruned adapter costs now, from module shapes.

A rank-1 component of a d_out x d_in module holds a (d_in) and b (d_out), and
for gated methods (DoRA's c, AdaLoRA's singular value) one scalar more. The
worker reports the count at r' (``params.adapter``); as components are pruned
the live count falls, and that is the number to compare methods by.
"""

from __future__ import annotations

import threading

from dashboard.api import ApiClient, ApiError
from dora_core.contracts.params import component_size, live_params  # noqa: F401 (re-exported)
from dora_core.contracts.wire import PRUNING_METHODS


def live_adapter_params(method: str | None, modules: list[dict], matrix: dict) -> int | None:
    """Sum of live components x their size, from a ``/rank-matrix`` answer.

    None when it cannot be exact: no scores yet, or adapted modules outside
    the blocks (the matrix leaves those out).
    """
    if not modules:
        return None
    shapes = {m["name"]: m["shape"] for m in modules}
    seen: set[str] = set()
    counted: list[tuple[int, list[int]]] = []
    for names, lives in zip(matrix.get("modules", []), matrix.get("live", []), strict=True):
        for name, live in zip(names, lives, strict=True):
            if name is None:
                continue
            if live is None or name not in shapes:
                return None
            counted.append((live, shapes[name]))
            seen.add(name)
    return live_params(counted, gated=method in PRUNING_METHODS) if seen == set(shapes) else None


class LiveParams:
    """Per-run memo for the runs table: recomputed only when a run's step moves
    (a finished run costs two requests once, not on every refresh)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[tuple[str, int], tuple[int | None, int | None]] = {}
        self._modules: dict[tuple[str, int], list[dict]] = {}

    def get(self, client: ApiClient, run: dict) -> int | None:
        if not run.get("num_modules"):
            return None
        key = (client.base_url, run["id"])
        with self._lock:
            cached = self._latest.get(key)
        if cached is not None and cached[0] == run.get("step"):
            return cached[1]
        try:
            modules = self._modules.get(key) or client.modules(run["id"])
            value = live_adapter_params(run.get("method"), modules, client.rank_matrix(run["id"]))
        except ApiError:
            return None
        with self._lock:
            self._modules[key] = modules
            self._latest[key] = (run.get("step"), value)
        return value
