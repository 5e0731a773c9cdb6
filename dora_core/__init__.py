"""Dynamic Low-Rank Adaptation (Mao et al., ACL 2024) for PyTorch / transformers.

Public names are imported lazily so that light modules (the job config, the
presets) can be used without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DoraConfig": "dora_core.config",
    "inject": "dora_core.tuner",
    "DoraTuner": "dora_core.tuner",
    "component_importance": "dora_core.importance",
    "budget_schedule": "dora_core.schedule",
    "dem_penalty": "dora_core.regularizer",
    "JobConfig": "dora_core.jobconfig",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dora_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
