"""The README's Python examples run as written (each in a fresh interpreter, in a temp dir),
and print what their comments say they print.

A comment after a ``print(...)`` that holds ``...`` shows the printed line
with the varying parts elided: ``# completed {'accuracy': ..., 'loss': ...}``
must match a line of the output, ``...`` standing for anything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
# print(...) followed by a comment with an elision: the line it prints
PRINTED = re.compile(r"^print\(.*\)\s+# (.*\.\.\..*)$", re.M)


def printed_claims(code: str) -> list[re.Pattern]:
    """The output lines a block's comments promise, as patterns ("..." = anything)."""
    return [
        re.compile(".*?".join(re.escape(part) for part in claim.strip().split("...")))
        for claim in PRINTED.findall(code)
    ]


def test_printed_claims_are_read_from_print_comments() -> None:
    code = 'x = 1\nprint(run.status, m)   # completed {"acc": ..., "loss": ...}\nprint(a)  # a note'
    (claim,) = printed_claims(code)
    assert claim.fullmatch('completed {"acc": 0.75, "loss": 0.5}')
    assert not claim.fullmatch('failed {"acc": 0.75, "loss": 0.5}')
    assert sum(len(printed_claims(block)) for block in BLOCKS) >= 2


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code: str, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    for claim in printed_claims(code):
        assert any(claim.fullmatch(line) for line in lines), (claim.pattern, out.stdout[-2000:])
    # Each example leaves what it promises: an adapter folder or a completed run.
    made = {p.name for p in tmp_path.rglob("*")}
    assert "adapter_config.json" in made or "result.json" in made, sorted(made)[:40]
