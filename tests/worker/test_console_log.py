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


SCORE_UNDER_A_REDIRECT = """
import io, logging.config, sys
swapped = io.StringIO()
sys.stderr = swapped  # a redirect: pytest's capture, a notebook cell, a tool
from dora_core.worker.rouge import rouge
assert rouge(["a cat sat"], ["the cat sat"])["rouge1"] > 0  # imports rouge-score, so absl
sys.stderr = sys.__stderr__  # the redirect ends
logging.config.dictConfig({"version": 1})  # what uvicorn does when it starts
print("closed" if swapped.closed else "open")
"""


def test_scoring_rouge_never_leaves_someone_elses_stderr_to_be_closed() -> None:
    """absl (imported by rouge-score) closes the stderr it saw at import when logging is
    reconfigured; under pytest's capture that closed the capture file and broke every later
    test of the process. A fresh interpreter, so that absl is imported here first."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", SCORE_UNDER_A_REDIRECT], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "open"
