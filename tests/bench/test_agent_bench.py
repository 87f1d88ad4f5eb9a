"""Smoke test of bench/agent.py: the quick mode runs end to end (real mosquitto, console, agent
processes, TUF repository, signed commands) and reports every figure. No timing thresholds:
the figures only have to be there and be positive."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_agent_bench_quick_reports_every_figure(tmp_path):
    out = subprocess.run([sys.executable, "bench/agent.py", "--quick", "--json", "--workdir", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    # Exit 1 only means a target was missed (a figure, not a failure); anything else is a crash.
    assert out.returncode in (0, 1), out.stderr[-4000:]
    r = json.loads(out.stdout)
    assert r["repeats"] == 1 and r["bundle_bytes"] > 1_000_000
    for path in ("mqtt", "http", "http-tuf-in-process"):
        assert r["update_s"][path] > 0
        phases = r["update_phases_median_ms"][path]
        assert set(phases) == {"command", "fetch", "verify", "install", "self_test", "activate"}
        assert all(v > 0 for v in phases.values()), phases
        assert r[f"ratio_{path}_vs_copy_sha256sum"] > 0 and r[f"ratio_{path}_vs_copy_hashlib"] > 0
    assert r["copy_sha256sum_s"] > 0 and r["copy_hashlib_s"] > 0
    (rb,) = r["rollback_runs"]
    assert rb["gate"] == "nan_outputs"
    for key in ("nan_sent_to_gate_ms", "gate_to_old_serving_ms", "nan_sent_to_old_serving_ms", "nan_sent_to_old_answer_ms"):
        assert rb[key] > 0 and r["rollback_ms"][key] > 0
    for key, runtime, quantization in (("rss_mb", "onnxruntime", "static-int8"), ("rss_litert_mb", "litert", "dynamic-int8")):
        rss = r[key]
        assert 0 < rss["idle_mb"] < rss["serving_mb"] and rss["peak_install_mb"] > rss["idle_mb"]
        assert rss["model"]["runtime"] == runtime and rss["model"]["quantization"] == quantization and rss["model"]["params"] > 3_000_000
        assert rss["serving_top_mappings_mb"] and sum(rss["serving_top_mappings_mb"].values()) <= rss["serving_mb"] + 0.5
        # The TUF worker is a child of the agent: with it the install peak can only be higher.
        assert rss["peak_install_with_tuf_worker_mb"] >= rss["peak_install_mb"] and rss["tuf_worker_peak_mb"] > 10  # a Python process with python-tuf
        assert rss["page_cache"].startswith("cold (dropped ") and "0 libraries" != rss["page_cache"][14:25]
        floor = rss["bare_runtime_process_mb"]
        assert 0 < floor["serving_mb"] < rss["serving_mb"] and rss["agent_over_bare_runtime_mb"] == round(rss["serving_mb"] - floor["serving_mb"], 1)
    refresh = r["tuf_refresh"]
    assert refresh["in_process_ms"] > 0 and refresh["worker_ms"] > 0 and refresh["repeats"] >= 2
    assert set(r["meets_targets"]) == {"rollback_gate_to_old", "rollback_nan_to_old", "rss_serving", "rss_peak_install", "rss_serving_litert", "rss_peak_install_litert"}
    assert r["machine"]["broker_tcp_nodelay"] is True
    assert not list(tmp_path.iterdir()), "the bench left its work folder behind"
