"""Dynamic Low-Rank Adaptation (Mao et al., ACL 2024) for PyTorch / transformers.

The method as a library: config, layer, tuner (inject, step, prune, freeze,
compact), importance (Eq. 7), schedule (Eq. 9), pruning, regulariser (Eq. 10),
export to PEFT, merge, the transformers Trainer callback. It may import torch,
transformers and safetensors only, never ``dora_core.worker`` (the job runner)
nor the web side; ``dora_core.contracts`` holds the torch-free modules the API
and the dashboard share with the worker. tests/test_layers.py checks the rule.

Public names are imported lazily so that ``dora_core.contracts`` (which the
API imports) does not pull in torch through this package's ``__init__``.
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
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dora_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
