"""The worker's console log goes to the sys.stderr of the moment, job after job."""

from __future__ import annotations

import io
import logging

from dora_core.worker.train.loop import _setup_logging


def test_the_console_log_follows_sys_stderr_when_it_is_swapped(monkeypatch) -> None:
    log = logging.getLogger("dora.test-console")
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    _setup_logging(None)
    log.info("first job")
    monkeypatch.setattr("sys.stderr", second)  # a notebook cell, pytest's capture, a tool
    _setup_logging(None)  # the next job in the same process adds no second console
    log.info("second job")
    assert first.getvalue() == "first job\n"
    assert second.getvalue() == "second job\n"
