"""Probation gates: each one fails on its own fault with the measured value and the threshold."""

from __future__ import annotations

import numpy as np

from edgeops.agent.config import ProbationConfig
from edgeops.agent.probation import ProbationMonitor, outputs_agree

GOOD = {"probs": np.array([[0.1, 0.7, 0.2]], np.float32)}
OTHER = {"probs": np.array([[0.6, 0.2, 0.2]], np.float32)}


def monitor(**kw) -> ProbationMonitor:
    settings = ProbationConfig(**{"window_count": 10, "window_seconds": 5, "min_shadow_samples": 3, **kw})
    return ProbationMonitor(settings, budget_p95_ms=10.0, task="classifier", started_at=100.0, has_previous=True)


def gate(verdict, name):
    return next(g for g in verdict.gates if g.gate == name)


def test_window_needs_count_and_time_then_passes():
    m = monitor()
    for _ in range(10):
        m.record(1.0, GOOD)
        m.record_shadow(GOOD, GOOD, 1.0)
    assert m.evaluate(now=101.0) is None, "count reached but time not"
    v = m.evaluate(now=106.0)
    assert v.passed and {g.gate for g in v.gates} == {"error_rate", "nan_outputs", "latency_p95", "latency_vs_previous", "agreement"}


def test_nan_fails_at_once():
    m = monitor()
    m.record(1.0, {"probs": np.array([[np.nan, 0.5, 0.5]], np.float32)})
    v = m.evaluate(now=100.1)
    assert not v.passed and gate(v, "nan_outputs").measured == 1 and gate(v, "nan_outputs").threshold == 0


def test_error_rate_fails_early_once_errors_exceed_the_window_budget():
    m = monitor(max_error_rate=0.1)
    m.record(None, None)
    assert m.evaluate(now=100.1) is None, "1 error in a window of 10 is within 10%"
    m.record(None, None)
    v = m.evaluate(now=100.2)
    assert not v.passed and gate(v, "error_rate").threshold == 0.1


def test_latency_over_budget_fails():
    m = monitor(latency_factor=1.5)
    for _ in range(10):
        m.record(50.0, GOOD)
    v = m.evaluate(now=106)
    g = gate(v, "latency_p95")
    assert not v.passed and not g.passed and g.measured == 50.0 and g.threshold == 15.0


def test_latency_against_previous_version_fails():
    m = monitor(previous_latency_factor=2.0)
    for _ in range(10):
        m.record(9.0, GOOD)  # within the budget of 15 ...
        m.record_shadow(GOOD, GOOD, 2.0)  # ... but 4.5x slower than the version it replaces
    v = m.evaluate(now=106)
    g = gate(v, "latency_vs_previous")
    assert not v.passed and not g.passed and g.threshold == 4.0


def test_disagreement_with_previous_version_fails():
    m = monitor(min_agreement=0.9)
    for i in range(10):
        m.record(1.0, GOOD)
        m.record_shadow(GOOD, OTHER if i % 2 else GOOD, 1.0)
    v = m.evaluate(now=106)
    g = gate(v, "agreement")
    assert not v.passed and g.measured == 0.5 and g.threshold == 0.9


def test_relative_gates_skip_without_previous_version():
    settings = ProbationConfig(window_count=2, window_seconds=0)
    m = ProbationMonitor(settings, 10.0, "classifier", started_at=0, has_previous=False)
    m.record(1.0, GOOD)
    m.record(1.0, GOOD)
    v = m.evaluate(now=1)
    assert v.passed and "no previous version" in gate(v, "agreement").detail


def test_agreement_for_generic_outputs_uses_cosine():
    a = {"y": np.array([1.0, 2.0, 3.0])}
    assert outputs_agree(a, {"y": np.array([1.01, 2.0, 3.0])}, "generic")
    assert not outputs_agree(a, {"y": np.array([-1.0, 2.0, -3.0])}, "generic")
    assert not outputs_agree(a, {"z": np.array([1.0])}, "generic")
