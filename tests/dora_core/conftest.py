"""The tiny models here gain nothing from intra-op threads, and on a shared,
busy CPU every multi-threaded small op waits for a descheduled worker."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
