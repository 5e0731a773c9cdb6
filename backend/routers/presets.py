"""Model and dataset presets (and whether they are installed here)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from dora_core.contracts.presets import all_presets
from dora_core.contracts.wire import METHODS

router = APIRouter(tags=["presets"])


@router.get("/presets")
def presets() -> list[dict[str, Any]]:
    return all_presets()


@router.get("/methods")
def methods() -> list[dict[str, Any]]:
    """The training methods: which prune (a budget curve, masks) and which train an adapter."""
    return [asdict(m) for m in METHODS.values()]
