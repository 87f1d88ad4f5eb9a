"""ruff on the whole repository and mypy --strict on pyproject's [tool.mypy] modules, in CI.

CI runs only pytest (scripts/test.sh), so the linters run here; both are pinned in the dev
extra. Rule set and module list live in pyproject.toml, not in this file.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_passes():
    r = _run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."])
    assert r.returncode == 0, f"ruff check found problems (config: pyproject.toml [tool.ruff]):\n{r.stdout}{r.stderr}"


def test_mypy_strict_passes_on_the_listed_modules():
    r = _run([sys.executable, "scripts/typecheck.py"])
    assert r.returncode == 0, f"mypy --strict (pyproject.toml [tool.mypy]) found problems:\n{r.stdout}{r.stderr}"
    assert "Success" in r.stdout, r.stdout


def test_mypy_sees_the_wings_by_their_import_names(tmp_path):
    """Without scripts/typecheck.py's tree, `edgeops.fleet.*` would be Any and a bad call would pass."""
    bad = tmp_path / "bad_call.py"
    bad.write_text('from edgeops.fleet.clock import system_clock\n\nsystem_clock("an argument it does not take")\n')
    r = _run([sys.executable, "scripts/typecheck.py", str(bad)])
    assert r.returncode == 1 and 'Too many arguments for "system_clock"' in r.stdout, r.stdout + r.stderr
