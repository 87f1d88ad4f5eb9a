"""Smoke test of bench/agent.py's sketch part: the drift sketching cost per inference is
reported with its parts (no timing threshold: the figures only have to be there)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_agent_bench_sketch_part_reports_the_cost(tmp_path):
    out = subprocess.run([sys.executable, "bench/agent.py", "--quick", "--parts", "sketch", "--sketch-runs", "30", "--json", "--workdir", str(tmp_path)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode in (0, 1), out.stderr[-4000:]  # 1: the target was missed (a figure, not a failure)
    r = json.loads(out.stdout)
    k = r["sketch"]
    assert k["runs"] == 30 and k["inference_ms"] > 0 and k["record_with_sketches_ms"] > 0
    assert k["sketch_over_inference"] == pytest.approx(k["sketch_added_ms"] / k["inference_ms"], abs=1e-3)
    assert k["tensors"]["input"]["channels"] == 3 and k["tensors"]["logits"]["classes"] == 1000
    assert k["sketched_values_per_channel_per_inference"]["input"] <= 1024 and k["batch_json_bytes"] > 0
    assert set(r["meets_targets"]) == {"sketch_under_5pct"}
    assert "flags:" in r["machine"]["lscpu"]
