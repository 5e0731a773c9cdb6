"""The import rule between the layers (docs/architecture.md), checked on the source.

    dora_core (the method library)  <- dora_core.worker (the job runner)
    dora_core.contracts (torch-free) <- worker, backend, dashboard

The library never imports the worker, the contracts or the web side; the
contracts import no third-party package beyond pydantic and pyyaml; the
backend and the dashboard never import torch (nor the library or the
worker), and the dashboard talks to the backend over HTTP only.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def imports_of(path: Path) -> set[str]:
    """Every absolute module name a file imports (also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def outside(name: str, allowed: tuple[str, ...]) -> bool:
    top = name.split(".")[0]
    if top in STDLIB:
        return False
    return not any(name == a or name.startswith(a + ".") for a in allowed)


LIBRARY = [p for p in (ROOT / "dora_core").glob("*.py")]
LIBRARY_MAY = ("torch", "transformers", "safetensors", *(f"dora_core.{p.stem}" for p in LIBRARY))
CONTRACTS_MAY = ("pydantic", "yaml", "dora_core.config", "dora_core.contracts")
WEB_MAY = ("dora_core.contracts", "fastapi", "sqlalchemy", "alembic", "starlette", "uvicorn")
WEB_MAY += ("pydantic", "pydantic_settings", "httpx", "dash", "plotly", "flask", "werkzeug")
WEB_MAY += ("yaml", "psycopg", "gunicorn", "numpy", "pydantic_core")
WEB_MAY += ("kaleido",)  # plotly's PNG engine, an optional extra imported only to export


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.name)
def test_the_library_imports_only_torch_transformers_safetensors(path: Path) -> None:
    bad = sorted(n for n in imports_of(path) if outside(n, LIBRARY_MAY) and n != "dora_core")
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", files("dora_core/contracts"), ids=lambda p: p.name)
def test_contracts_import_no_torch_and_no_worker(path: Path) -> None:
    bad = sorted(n for n in imports_of(path) if outside(n, CONTRACTS_MAY))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize(
    "path", [*files("backend"), *files("dashboard")], ids=lambda p: str(p.relative_to(ROOT))
)
def test_backend_and_dashboard_import_only_the_contracts_of_dora_core(path: Path) -> None:
    # The backend's Ray launcher talks to a cluster through Ray's job client (lazily imported).
    backend = ("backend", "ray.job_submission")
    own = backend if path.is_relative_to(ROOT / "backend") else ("dashboard",)
    allowed = (*WEB_MAY, *own)
    bad = sorted(n for n in imports_of(path) if outside(n, allowed) and n != "dora_core")
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself: a web module importing torch or the worker is reported."""
    bad = tmp_path / "page.py"
    bad.write_text("import torch\nfrom dora_core.worker.train import loop\nimport json\n")
    found = {n for n in imports_of(bad) if outside(n, WEB_MAY)}
    assert found == {"torch", "dora_core.worker.train"}


def test_importing_the_api_and_the_dashboard_loads_no_torch() -> None:
    """The same rule at run time: what the web processes load, transitively."""
    code = (
        "import sys, backend.main, dashboard.app; "
        "heavy = sorted(m for m in ('torch', 'transformers', 'dora_core.worker', 'dora_core.tuner')"
        " if m in sys.modules); print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
