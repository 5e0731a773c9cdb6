"""The API as a real server process with a stand-in worker:
``uvicorn --factory tests.backend.stand_in_api:app``.

Everything is ``backend.main.create_app`` with the settings from the
environment, except two things no variable sets: the launcher's command is
``python $DORA_TEST_WORKER`` (a script the test wrote) and the watcher looks
every ``$DORA_TEST_WATCH_S`` seconds.
"""

from __future__ import annotations

import os
import sys

from fastapi import FastAPI

from backend.launcher import LocalProcessLauncher
from backend.main import create_app
from backend.settings import Settings


def app() -> FastAPI:
    settings = Settings.from_env().model_copy(
        update={"watch_interval_s": float(os.environ.get("DORA_TEST_WATCH_S", "1"))}
    )
    launcher = LocalProcessLauncher(argv_prefix=(sys.executable, os.environ["DORA_TEST_WORKER"]))
    return create_app(settings, launcher)
