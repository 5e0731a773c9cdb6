"""Model and dataset presets (and whether they are installed here)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from dora_core.presets import all_presets

router = APIRouter(tags=["presets"])


@router.get("/presets")
def presets() -> list[dict[str, Any]]:
    return all_presets()
