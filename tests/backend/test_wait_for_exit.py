"""wait_for_exit: the one polling loop both launchers wait with."""

from __future__ import annotations

import time

from backend.launcher import WorkerExit, wait_for_exit


def test_returns_the_exit_on_the_poll_that_sees_it() -> None:
    calls: list[str] = []

    def poll(handle: str) -> WorkerExit | None:
        calls.append(handle)
        return WorkerExit(0) if len(calls) == 3 else None

    assert wait_for_exit(poll, "local:1", timeout_s=5, interval_s=0.01) == WorkerExit(0)
    assert calls == ["local:1"] * 3


def test_gives_none_at_the_deadline_without_sleeping_past_it() -> None:
    calls = 0

    def poll(_handle: str) -> WorkerExit | None:
        nonlocal calls
        calls += 1
        return None

    started = time.monotonic()
    assert wait_for_exit(poll, "ray:x", timeout_s=0.3, interval_s=10) is None
    elapsed = time.monotonic() - started
    # one poll, one sleep cut from 10 s to the 0.3 s left, one last poll at the deadline
    assert calls == 2 and 0.3 <= elapsed < 5
