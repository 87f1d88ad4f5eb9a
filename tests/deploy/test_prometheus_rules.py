"""deploy/prometheus/edgeops-rules.yml passes `promtool check rules` and its unit tests
(`promtool test rules`). promtool comes with Debian's prometheus package (scripts/setup.sh
installs it when it runs as root with apt-get); without it the test is skipped, saying so."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install -y prometheus, or run scripts/setup.sh as root)")


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=120)  # type: ignore[list-item]


@needs_promtool
def test_rules_are_valid():
    r = _promtool("check", "rules", "edgeops-rules.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@needs_promtool
def test_rules_unit_tests_pass():
    r = _promtool("test", "rules", "edgeops-rules.test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_a_broken_rule_is_caught(tmp_path):
    """The check can fail: a rule with a bad expression is refused."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: edgeops_drift_level ==\n")
    r = subprocess.run([PROMTOOL, "check", "rules", str(bad)], capture_output=True, text=True, timeout=120)  # type: ignore[list-item]
    assert r.returncode != 0
