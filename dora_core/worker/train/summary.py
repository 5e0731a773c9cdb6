"""The few lines `dora train` ends with: what was reached, where it went, where to look.

Pure: built from result.json's fields and the registered modules, so the same
summary can be printed again from a finished run directory.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def rank_by_type(rank_pattern: dict[str, int], modules: list[dict[str, Any]]) -> dict[str, float]:
    """Mean live components per module type (in the model's order), from {module: live}."""
    per_type: dict[str, list[int]] = defaultdict(list)
    for m in modules:
        if m["name"] in rank_pattern:
            per_type[m["type"]].append(rank_pattern[m["name"]])
    return {t: sum(v) / len(v) for t, v in per_type.items()}


def adapter_params_at_start(modules: list[dict[str, Any]], gated: bool = True) -> int:
    """Adapter parameters with every component live: r' x (d_in + d_out [+ 1 gate])."""
    return sum(m["rank"] * (m["shape"][0] + m["shape"][1] + int(gated)) for m in modules)


def summary_lines(
    result: dict[str, Any],
    modules: list[dict[str, Any]],
    run_dir: Path,
    adapter_dir: Path | None,
    dashboard_url: str | None = None,
) -> list[str]:
    """Metrics, best step, adapter size now and at r', live rank per module type, time, paths."""
    metrics = result["metrics"]
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, int | float))
    lines = [f"done: dev {shown} ({_duration(result['wall_time_s'])})"]
    best = result.get("best")
    if best:
        lines.append(
            f"best {best['key']} {best['value']:.4f} at step {best['step']} of {result['total_steps']}"
        )
    params = result["params"]
    pattern = result.get("rank_pattern")
    if pattern and modules:
        start = adapter_params_at_start(modules)
        live = sum(pattern.values())
        lines.append(
            f"adapter: {params['adapter']:,} parameters ({live} of "
            f"{sum(m['rank'] for m in modules)} components live; {start:,} at r'), "
            f"head {params['head']:,}"
        )
        ranks = rank_by_type(pattern, modules)
        lines.append(
            "live rank per module type: " + ", ".join(f"{t} {r:.1f}" for t, r in ranks.items())
        )
    elif params.get("adapter"):
        lines.append(f"adapter: {params['adapter']:,} parameters, head {params['head']:,}")
    else:
        lines.append(f"trained parameters: {params['trainable']:,}")
    if adapter_dir is not None:
        lines.append(
            f"adapter: {adapter_dir}  (PEFT format; `dora merge {run_dir} OUT` for merged weights)"
        )
    lines.append(f"run dir: {run_dir}")
    if dashboard_url:
        lines.append(f"dashboard: {dashboard_url}")
    return lines


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"
