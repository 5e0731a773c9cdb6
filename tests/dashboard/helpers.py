"""Reading what the dashboard produced: component trees and Patches."""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

from dash import Patch

from dora_core.contracts.wire import METHODS as WIRE_METHODS

# what GET /api/methods answers (the API serves dora_core.contracts.wire.METHODS), by name
METHODS: dict[str, Any] = {name: asdict(info) for name, info in WIRE_METHODS.items()}


def texts(component: Any) -> list[str]:
    """Every string child in a component tree (or list of them), in order."""
    if isinstance(component, str):
        return [component]
    children = (
        component if isinstance(component, list | tuple) else getattr(component, "children", None)
    )
    if children is None:
        return []
    if not isinstance(children, list | tuple):
        children = [children]
    return [t for child in children for t in texts(child)]


def graphs(component: Any) -> list:
    """Every dcc.Graph in a component tree (or list of them)."""
    found = []
    if getattr(component, "figure", None) is not None:
        found.append(component)
    children = (
        component if isinstance(component, list | tuple) else getattr(component, "children", None)
    )
    if children is None or isinstance(children, str):
        return found
    for child in children if isinstance(children, list | tuple) else [children]:
        found.extend(graphs(child))
    return found


def apply_patch(figure: dict, patch: Patch) -> dict:
    """Replay a Patch's operations on a figure dict, the way the browser does."""
    out = copy.deepcopy(figure)
    for op in patch._operations:
        *path, last = op["location"]
        target = out
        for key in path:
            target = target[key]
        if op["operation"] == "Extend":
            target[last].extend(op["params"]["value"])
        elif op["operation"] == "Assign":
            target[last] = op["params"]["value"]
        else:  # the dashboard's helpers use no other operation
            raise AssertionError(f"unexpected patch operation {op['operation']}")
    return out
