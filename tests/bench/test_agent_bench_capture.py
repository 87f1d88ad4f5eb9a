"""Smoke test of bench/agent.py's capture part: capture cost, sealed size, spool size and the
upload through mosquitto are reported, and every captured sample reached the store (no
timing threshold: the figures only have to be there)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_agent_bench_capture_part_reports_and_uploads_everything(tmp_path):
    out = subprocess.run([sys.executable, "bench/agent.py", "--quick", "--parts", "capture", "--capture-samples", "6", "--json", "--workdir", str(tmp_path)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    r = json.loads(out.stdout)
    c = r["capture"]
    assert c["samples"] == 6 == c["uploaded"] and c["capture_ms_median"] > 0
    assert c["sealed_bytes_per_sample"] > 224 * 224 * 3  # the frame, sealed (never smaller: nothing is dropped)
    assert c["spool_on_disk_bytes_per_sample"] >= c["sealed_bytes_per_sample"] * 0.9
    assert r["meets_targets"] == {"capture_all_uploaded": True} and "flags:" in r["machine"]["lscpu"]
