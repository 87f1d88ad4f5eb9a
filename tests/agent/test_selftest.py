"""Self-test before activation, on real onnxruntime with real test bundles."""

from __future__ import annotations

import pytest

from edgeops.agent.config import SelfTestConfig
from edgeops.agent.runtimes import load_runtime
from edgeops.agent.selftest import run_self_test
from edgeops.bundle import extract_bundle
from tests.support.bundles import write_test_bundle


def _prepare(tmp_path, **kw):
    b = tmp_path / "b.bundle"
    write_test_bundle(b, **kw)
    d = tmp_path / "files"
    return d, extract_bundle(b, d)


def _run(files, manifest, **settings):
    return run_self_test(files, manifest, SelfTestConfig(latency_runs=10, **settings), load_runtime, ["CPUExecutionProvider"])


def _failed(report):
    return {g.gate for g in report.gates if not g.passed}


def test_good_bundle_passes_with_figures(tmp_path):
    report = _run(*_prepare(tmp_path))
    assert report.passed and report.latency_p95_ms is not None and report.load_s is not None
    assert {"load", "golden", "errors", "latency_p95"} <= {g.gate for g in report.gates}


def test_wrong_golden_outputs_fail(tmp_path):
    report = _run(*_prepare(tmp_path, golden_ok=False))
    assert not report.passed and _failed(report) == {"golden"}


def test_nan_model_fails_golden(tmp_path):
    assert "golden" in _failed(_run(*_prepare(tmp_path, variant="nan")))


def test_crashing_model_fails_errors(tmp_path):
    assert {"errors", "golden"} <= _failed(_run(*_prepare(tmp_path, variant="crash")))


def test_slow_model_over_budget_fails_latency(tmp_path):
    report = _run(*_prepare(tmp_path, variant="slow", latency_p95_ms=1.0))
    g = next(g for g in report.gates if g.gate == "latency_p95")
    assert not g.passed and g.measured > g.threshold == 1.5


def test_memory_limit(tmp_path):
    report = _run(*_prepare(tmp_path), max_memory_mb=1e-9)
    # Loading always costs a little RSS; a limit of ~0 must fail unless nothing was measured at all.
    g = next(g for g in report.gates if g.gate == "memory")
    assert g.threshold == 1e-9 and g.passed == (g.measured <= 1e-9)


def test_unloadable_model_fails_load(tmp_path):
    files, manifest = _prepare(tmp_path)
    target = files / manifest.artifact
    target.chmod(0o644)
    target.write_bytes(b"not a model")
    report = _run(files, manifest)
    assert not report.passed and _failed(report) == {"load"}


@pytest.mark.parametrize("variant", ["nan", "slow", "crash"])
def test_triggered_variants_pass_self_test(tmp_path, variant):
    """Faults that only live inputs trigger get past self-test: probation has to catch them."""
    assert _run(*_prepare(tmp_path, variant=variant, trigger=100.0, latency_p95_ms=2.0)).passed
