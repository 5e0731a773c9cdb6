"""The four training methods behind one interface (``base.Method``) the loop drives.

- ``dora``: our tuner (``dora.py``);
- ``lora``, ``adalora``: the real PEFT package on DoRA's calendar (``peft.py``);
- ``full``: every weight trains (``full.py``).

``build_method`` picks the class by the plan's method name; that lookup is
the only place the name decides anything.
"""

from __future__ import annotations

from torch import nn

from dora_core.worker.train.methods.base import Method, StepResult
from dora_core.worker.train.methods.dora import DoraMethod
from dora_core.worker.train.methods.full import FullMethod
from dora_core.worker.train.methods.peft import AdaLoraMethod, LoraMethod
from dora_core.worker.train.plan import MethodPlan

METHOD_CLASSES: dict[str, type[Method]] = {
    cls.name: cls for cls in (DoraMethod, LoraMethod, AdaLoraMethod, FullMethod)
}

__all__ = ["METHOD_CLASSES", "Method", "StepResult", "build_method"]


def build_method(model: nn.Module, spec: MethodPlan) -> Method:
    """Wrap ``model`` for ``spec``'s method (seed the RNG first: adapters start random)."""
    return METHOD_CLASSES[spec.name].build(model, spec)
