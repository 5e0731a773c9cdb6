"""ASGI entry point: `uvicorn backend.main:app`. Only wiring lives here."""

from __future__ import annotations

from fastapi import FastAPI

from dora_core import __version__


def create_app() -> FastAPI:
    app = FastAPI(title="DoRA telemetry API", version=__version__)

    @app.get("/api/health", tags=["health"])
    def health() -> dict:
        return {"status": "ok", "version": __version__}

    return app


app = create_app()
