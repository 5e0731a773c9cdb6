"""What the run page's cards share: the run's method as the API describes it
(``GET /api/methods``: does it prune, does it train an adapter) and its pruning phase.

No card spells a method's name: they ask these helpers, which ask the
method's description. A method the API does not know (``None``) is drawn
as an adapter that does not prune.
"""

from __future__ import annotations

from dashboard import figures
from dashboard.api import ApiClient, ApiError, Method

FULL_MESSAGE = "Full fine-tuning trains every weight: there are no adapter ranks to show."


def method_of(client: ApiClient, run: dict) -> Method | None:
    """The run's method (the API's list is fetched once per process); None if unknown
    or if the API cannot be asked right now."""
    try:
        return client.methods().get(run.get("method") or "")
    except ApiError:
        return None


def prunes(method: Method | None) -> bool:
    """Components are scored and removed while training: a budget schedule, a phase."""
    return bool(method and method["prunes"])


def has_ranks(method: Method | None) -> bool:
    """Trains an adapter, so there are ranks and component scores to show."""
    return method is None or bool(method["adapter"])


def target_rank(run: dict) -> str:
    """b(T) (LoRA's r) as the run or its config gives it; "–" when neither does."""
    return str(run.get("target_rank") or (run.get("config") or {}).get("target_rank", "–"))


def phase_of(run: dict, *, method: Method | None) -> tuple[float, float] | None:
    """The pruning phase of a run, from its config; None for methods that do not prune."""
    if not prunes(method):
        return None
    config = run.get("config") or {}
    return figures.pruning_phase(
        run.get("total_steps"), config.get("warmup_frac", 0.15), config.get("final_frac", 0.5)
    )
