"""ASGI entry point: ``uvicorn backend.main:app``. Only wiring lives here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from backend.address import LearnAddress, ServerAddress
from backend.db import Database
from backend.errors import install_handlers
from backend.launcher import Launcher, LocalProcessLauncher
from backend.leases import Lease
from backend.ray_launcher import RayJobLauncher
from backend.routers import artifacts, health, jobs, presets, queries, runs, stream, telemetry
from backend.security import BodyLimit, InstanceCheck, RequestGuard
from backend.services.jobs import JobQueue
from backend.settings import Settings
from backend.watcher import Watcher, reconcile
from dora_core import __version__


def create_app(settings: Settings | None = None, launcher: Launcher | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    if launcher is None:  # DORA_LAUNCHER: local subprocesses, or jobs on a Ray cluster
        launcher = (
            RayJobLauncher.from_settings(settings)
            if settings.launcher == "ray"
            else LocalProcessLauncher()
        )
    # Where workers report: DORA_API_URL, else where this server really listens.
    address = ServerAddress(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.database_url, settings.sqlite_busy_timeout_s)
        db.migrate()
        app.state.instance_id = db.instance_id()  # the workers of this database carry it
        settings.runs_dir.mkdir(parents=True, exist_ok=True)
        # This process's hold on the workers it starts or adopts (other API processes may
        # share the database).
        lease = Lease(settings.worker_lease_s)
        reconcile(db, launcher, lease)  # runs left open by an API process that is gone
        address.start()
        jobs = JobQueue(db, settings, launcher, app.state.instance_id, address=address, lease=lease)
        # Jobs still waiting when an earlier API process stopped; without DORA_API_URL they
        # start at the watcher's first pass after the server's socket is bound.
        jobs.start_queued()
        # A worker that ended frees a slot: each pass also starts what now fits.
        watcher = Watcher(
            db, launcher, lease, settings.watch_interval_s, after_pass=jobs.start_queued
        )
        watcher.start()
        app.state.db, app.state.jobs = db, jobs
        try:
            yield
        finally:
            watcher.stop()
            lease.release(db)  # the next API to look adopts our live workers at once
            db.dispose()

    app = FastAPI(
        title="DoRA telemetry API",
        version=__version__,
        description="Telemetry ingest, queries and job launcher (docs/protocol.md).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.launcher = launcher
    install_handlers(app)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        # A remote worker's adapter upload (backend.services.adapters) has its own limit.
        larger=[("PUT", r"/api/runs/\d+/adapter", settings.max_adapter_bytes)],
    )
    # A worker of another API instance is refused before its body is read or its token checked.
    app.add_middleware(InstanceCheck, state=app.state)
    # Outside the body limit (refused requests are not read), inside CORS (its headers still apply).
    app.add_middleware(
        RequestGuard, api_token=settings.api_token, cors_origins=settings.cors_origins
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    for module in (health, runs, telemetry, queries, stream, jobs, presets, artifacts):
        app.include_router(module.router, prefix="/api")
    # Outermost: every request that reaches the socket says where the server listens.
    app.add_middleware(LearnAddress, address=address)
    default_openapi = app.openapi
    app.openapi = lambda: telemetry.document(default_openapi())  # type: ignore[method-assign]
    return app


app = create_app()
