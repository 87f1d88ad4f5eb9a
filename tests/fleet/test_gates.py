"""Each gate evaluator: pass, fail, wait, and "not configured"."""

from __future__ import annotations

import pytest

from edgeops.fleet.rollouts.gates import GATES, Outcome, WaveStats, evaluate
from edgeops.fleet.rollouts.settings import build_settings


def cfg(**kw):
    return build_settings(bundle_name="m", bundle_version="2", **kw)


def stats(size=10, now=100.0, started=0.0, **counts):
    extra = {k: counts.pop(k) for k in list(counts) if k in WaveStats.__dataclass_fields__}
    return WaveStats(size=size, counts=counts, started_at=started, now=now, **extra)


def test_registry_has_every_gate():
    assert set(GATES) == {"min_reporting", "max_failure_rate", "max_rollback_rate", "max_error_rate", "max_latency_regression", "min_agreement", "bake", "max_drift"}


def test_min_reporting():
    g = GATES["min_reporting"]
    assert g(stats(succeeded=8, sent=2), cfg(min_reporting=0.9)).outcome is Outcome.WAIT
    v = g(stats(succeeded=9, sent=1), cfg(min_reporting=0.9))
    assert v.outcome is Outcome.PASS and v.measured == 0.9
    # failures and timeouts are reports too
    assert g(stats(succeeded=5, failed=2, timed_out=2, rolled_back=1), cfg()).outcome is Outcome.PASS


def test_max_failure_rate_fails_early():
    g = GATES["max_failure_rate"]
    assert g(stats(succeeded=10), cfg(max_failure_rate=0.1)).outcome is Outcome.PASS
    assert g(stats(succeeded=9, failed=1), cfg(max_failure_rate=0.1)).outcome is Outcome.PASS
    # 2 of 10 failed while 8 are still running: cannot recover -> FAIL now
    v = g(stats(failed=1, timed_out=1, sent=8), cfg(max_failure_rate=0.1))
    assert v.outcome is Outcome.FAIL and v.measured == 0.2 and v.threshold == 0.1
    assert g(stats(size=1, rolled_back=1), cfg(max_failure_rate=0.05)).outcome is Outcome.FAIL


def test_max_rollback_rate():
    g = GATES["max_rollback_rate"]
    assert g(stats(rolled_back=5, succeeded=5), cfg()) is None  # not configured
    assert g(stats(rolled_back=1, succeeded=9), cfg(max_failure_rate=0.2, max_rollback_rate=0.1)).outcome is Outcome.PASS
    assert g(stats(rolled_back=2, succeeded=8), cfg(max_failure_rate=0.2, max_rollback_rate=0.1)).outcome is Outcome.FAIL


def test_max_error_rate():
    g = GATES["max_error_rate"]
    assert g(stats(), cfg()) is None
    assert g(stats(inferences=0), cfg(max_error_rate=0.01)).outcome is Outcome.PASS
    assert g(stats(inferences=1000, errors=5, nans=4), cfg(max_error_rate=0.01)).outcome is Outcome.PASS
    v = g(stats(inferences=1000, errors=5, nans=6), cfg(max_error_rate=0.01))
    assert v.outcome is Outcome.FAIL and v.measured == pytest.approx(0.011)


def test_max_latency_regression():
    g = GATES["max_latency_regression"]
    c = cfg(max_latency_regression=1.2)
    assert g(stats(), cfg()) is None
    assert g(stats(new_p95_ms=None), c).outcome is Outcome.PASS  # nothing measured yet
    no_base = g(stats(new_p95_ms=10.0, new_latency_samples=3), c)
    assert no_base.outcome is Outcome.PASS and "baseline" in no_base.detail
    ok = g(stats(new_p95_ms=11.0, new_latency_samples=3, baseline_p95_ms=10.0, baseline_samples=5), c)
    assert ok.outcome is Outcome.PASS and ok.measured == pytest.approx(1.1)
    bad = g(stats(new_p95_ms=13.0, new_latency_samples=3, baseline_p95_ms=10.0, baseline_samples=5), c)
    assert bad.outcome is Outcome.FAIL and bad.measured == pytest.approx(1.3)


def test_min_agreement():
    g = GATES["min_agreement"]
    assert g(stats(), cfg()) is None
    assert g(stats(), cfg(min_agreement=0.98)).outcome is Outcome.PASS
    assert g(stats(agreement=0.99, agreement_samples=4), cfg(min_agreement=0.98)).outcome is Outcome.PASS
    assert g(stats(agreement=0.90, agreement_samples=4), cfg(min_agreement=0.98)).outcome is Outcome.FAIL


def test_bake():
    g = GATES["bake"]
    assert g(stats(now=50, started=0), cfg(bake_s=60)).outcome is Outcome.WAIT
    assert g(stats(now=60, started=0), cfg(bake_s=60)).outcome is Outcome.PASS
    assert g(stats(now=0, started=0), cfg()).outcome is Outcome.PASS


def test_evaluate_combines():
    c = cfg(bake_s=10, min_reporting=1.0)
    assert evaluate(stats(succeeded=10, now=5), c)[0] is Outcome.WAIT
    assert evaluate(stats(succeeded=10, now=20), c)[0] is Outcome.PASS
    out, verdicts = evaluate(stats(failed=3, sent=7, now=1), c)
    assert out is Outcome.FAIL and any(v.gate == "max_failure_rate" and v.outcome is Outcome.FAIL for v in verdicts)
    # an empty wave (nothing left to assign) passes once baked
    assert evaluate(stats(size=0, now=20), c)[0] is Outcome.PASS
