"""The distribution installs its three import packages and the `dora` script."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("package", ["dora_core", "backend", "dashboard"])
def test_import_packages(package: str) -> None:
    module = __import__(package)
    assert module.__file__ is not None


def test_distribution_declares_ranges_and_the_constraints_file_pins_torch() -> None:
    """A user's own torch build is kept (a range); our machines get the exact CPU wheel."""
    requires = {
        r.split(";")[0].replace(" ", "") for r in importlib.metadata.requires("dora-toolkit")
    }
    assert "torch<2.14,>=2.4" in requires or "torch>=2.4,<2.14" in requires
    assert not any(r.startswith("torch==") for r in requires)
    assert any(r.startswith("peft") and "<" in r for r in requires)
    root = Path(__file__).resolve().parent.parent
    pins = [ln for ln in (root / "constraints.txt").read_text().splitlines() if ln and ln[0] != "#"]
    assert pins == ["torch==2.13.0"]
    assert "-c constraints.txt" in (root / "Makefile").read_text()
    assert "-c constraints.txt" in (root / "Dockerfile").read_text()


def test_console_script_is_registered() -> None:
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("dora") == "dora_core.worker.cli:main"


def test_jobconfig_imports_without_torch() -> None:
    """The API imports the job schema; that must not drag torch in."""
    code = "import sys, dora_core.contracts.job, dora_core.contracts.presets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dora_help_runs() -> None:
    exe = shutil.which("dora") or str(__import__("pathlib").Path(sys.executable).parent / "dora")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "usage: dora" in out.stdout
    assert "presets" in out.stdout


def test_dora_presets_json_reports_installed_packages() -> None:
    import json

    out = subprocess.run(
        [sys.executable, "-m", "dora_core.worker.cli", "presets", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert {"minilm", "smollm2-135m", "rt-snippets", "sms-spam", "bbc-news", "tweets"} <= set(rows)
    # make test installs requirements-data.txt, so every preset must resolve to a real path
    for row in rows.values():
        assert row["available"], row
        assert __import__("pathlib").Path(row["path"]).exists()
