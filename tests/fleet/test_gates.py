"""Each gate evaluator: pass, fail, wait, inconclusive, and "not configured"; the judged gates' looks."""

from __future__ import annotations

import pytest

from edgeops.fleet.rollouts.gates import GATES, Outcome, WaveStats, evaluate
from edgeops.fleet.rollouts.records import DeviceTelemetry
from edgeops.fleet.rollouts.settings import build_settings


def cfg(**kw):
    return build_settings(bundle_name="m", bundle_version="2", **kw)


def stats(size=10, now=100.0, started=0.0, **counts):
    extra = {k: counts.pop(k) for k in list(counts) if k in WaveStats.__dataclass_fields__}
    return WaveStats(size=size, counts=counts, started_at=started, now=now, **extra)


def test_registry_has_every_gate():
    assert set(GATES) == {"min_reporting", "max_failure_rate", "max_rollback_rate", "max_error_rate", "max_latency_regression", "max_latency_p50_regression", "min_agreement", "bake", "max_drift", "max_confidence_drop", "max_class_mix_shift"}


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


def dev(i, *, p95=None, p50=None, inferences=1000.0, errors=0.0, nans=0.0, agreement=None, profile="x86"):
    """One device's summed telemetry (what the cohorts input gives the gates)."""
    return DeviceTelemetry(
        f"d{i}", profile, inferences, errors, nans, (p95 or 0.0) * inferences, inferences if p95 else 0.0, agreement or 0.0, 1 if agreement is not None else 0,
        p50_weighted=(p50 or 0.0) * inferences, p50_weight=inferences if p50 else 0.0, agreement_weight=inferences if agreement is not None else 0.0,
    )


def cohort(n, start=0, **kw):
    return [dev(start + i, **{k: (v(i) if callable(v) else v) for k, v in kw.items()}) for i in range(n)]


def spread(ms):
    """Per-device p95s around ``ms``: devices differ by a few percent."""
    return lambda i: ms * (1 + 0.02 * ((i * 7) % 11 - 5) / 5)


def test_max_error_rate():
    g = GATES["max_error_rate"]
    c = cfg(max_error_rate=0.01)
    assert g(stats(), cfg()) is None
    # nothing measured, or too few devices on either side: inconclusive, never pass
    silent = g(stats(), c)
    assert silent.outcome is Outcome.INCONCLUSIVE and "0 of the wave's 10 devices reported telemetry" in silent.detail and silent.looks == 0
    few = g(stats(size=3, new_devices=cohort(3), control_devices=cohort(10, 100)), c)
    assert few.outcome is Outcome.INCONCLUSIVE and "3 new vs 10 control devices; at least 5" in few.detail
    # the judge looks only once min_reporting of the wave has telemetry (a look on part of the wave spends alpha early)
    part = g(stats(size=30, new_devices=cohort(20, errors=100.0), control_devices=cohort(30, 100)), c)
    assert part.outcome is Outcome.INCONCLUSIVE and "the judge looks once 27 have" in part.detail and part.looks == 0
    # 1% errors on both sides: pass; 5% on the wave vs 0.5% on the control: fail, naming the metric
    same = g(stats(new_devices=cohort(10, errors=10.0), control_devices=cohort(10, 100, errors=10.0)), c)
    assert same.outcome is Outcome.PASS and same.looks == 1 and [j["metric"] for j in same.judgement] == ["error_rate", "nan_rate"]
    bad = g(stats(new_devices=cohort(10, nans=50.0), control_devices=cohort(10, 100, nans=5.0)), c)
    assert bad.outcome is Outcome.FAIL and "nan_rate: fail" in bad.detail and bad.measured == pytest.approx(0.045)
    # alpha is split between the two rates, and between the looks
    assert [j["alpha"] for j in bad.judgement] == [pytest.approx(0.05 / 5 / 2)] * 2


def test_max_latency_regression():
    g = GATES["max_latency_regression"]
    c = cfg(max_latency_regression=1.1)
    assert g(stats(), cfg()) is None
    assert g(stats(), c).outcome is Outcome.INCONCLUSIVE  # nothing measured yet
    no_control = g(stats(new_devices=cohort(30, p95=10.0)), c)
    assert no_control.outcome is Outcome.INCONCLUSIVE and "30 new vs 0 control" in no_control.detail
    ok = g(stats(new_devices=cohort(30, p95=spread(10.0)), control_devices=cohort(30, 100, p95=spread(10.0))), c)
    assert ok.outcome is Outcome.PASS and ok.measured == pytest.approx(1.0, abs=0.02) and ok.judgement[0]["n_control"] == 30
    bad = g(stats(new_devices=cohort(30, p95=spread(12.0)), control_devices=cohort(30, 100, p95=spread(10.0))), c)
    assert bad.outcome is Outcome.FAIL and bad.measured == pytest.approx(1.2, abs=0.02) and bad.threshold == pytest.approx(1.1)
    assert "Mann-Whitney p=" in bad.detail and "look 1 of 5" in bad.detail
    # significant but within the bound: pass (a 5% slowdown is allowed by 1.1)
    assert g(stats(new_devices=cohort(30, p95=spread(10.5)), control_devices=cohort(30, 100, p95=spread(10.0))), c).outcome is Outcome.PASS


def test_judged_gate_looks_are_spaced_counted_and_final():
    g = GATES["max_latency_regression"]
    c = cfg(max_latency_regression=1.1, judge_max_looks=2, judge_look_interval_s=60)
    good = dict(new_devices=cohort(30, p95=spread(10.0)), control_devices=cohort(30, 100, p95=spread(10.0)))
    slow = dict(new_devices=cohort(30, p95=spread(13.0)), control_devices=cohort(30, 100, p95=spread(10.0)))
    first = g(stats(now=100, **good), c)
    assert first.outcome is Outcome.PASS and (first.looks, first.looked_at, first.final) == (1, 100, False)
    # within the interval the last verdict stands, whatever the data says now
    again = g(stats(now=130, previous={"max_latency_regression": first.to_dict()}, **slow), c)
    assert again.outcome is Outcome.PASS and again.looks == 1
    # the second (last) look sees the regression
    second = g(stats(now=160, previous={"max_latency_regression": first.to_dict()}, **slow), c)
    assert second.outcome is Outcome.FAIL and second.looks == 2 and second.final
    # after the last look nothing changes it
    assert g(stats(now=1000, previous={"max_latency_regression": second.to_dict()}, **good), c).outcome is Outcome.FAIL
    # an inconclusive evaluation spends no look
    none = g(stats(now=100, new_devices=cohort(2, p95=10.0)), c)
    assert none.outcome is Outcome.INCONCLUSIVE and none.looks == 0


def test_first_install_has_nothing_to_compare_with():
    """No device of the wave ran another version of the bundle: the comparisons pass, saying so
    (final); one upgraded device is enough to need the judge again."""
    for name, c in (("max_latency_regression", cfg(max_latency_regression=1.1)), ("max_error_rate", cfg(max_error_rate=0.01)), ("min_agreement", cfg(min_agreement=0.9))):
        v = GATES[name](stats(size=4, upgrades=0), c)
        assert v.outcome is Outcome.PASS and v.final and "first install on all 4 devices" in v.detail, name
        assert GATES[name](stats(size=4, upgrades=1), c).outcome is Outcome.INCONCLUSIVE, name


def test_min_agreement():
    g = GATES["min_agreement"]
    assert g(stats(), cfg()) is None
    assert g(stats(), cfg(min_agreement=0.98)).outcome is Outcome.INCONCLUSIVE
    assert g(stats(new_devices=cohort(4, agreement=1.0)), cfg(min_agreement=0.98)).outcome is Outcome.INCONCLUSIVE  # 4 < 5 devices
    v = g(stats(size=5, new_devices=cohort(5, agreement=0.99)), cfg(min_agreement=0.98))
    assert v.outcome is Outcome.PASS and v.measured == pytest.approx(0.99)
    # 90% of 5000 inferences vs 98%: significantly below -> fail, with the test in the detail
    bad = g(stats(size=5, new_devices=cohort(5, agreement=0.90)), cfg(min_agreement=0.98))
    assert bad.outcome is Outcome.FAIL and "one-proportion p=" in bad.detail and bad.judgement[0]["n_new"] == 5
    # 97% of 100 inferences vs 98%: below, but within the noise -> inconclusive (more inferences decide), never a pass
    unsure = g(stats(size=5, new_devices=cohort(5, agreement=0.97, inferences=20.0)), cfg(min_agreement=0.98))
    assert unsure.outcome is Outcome.INCONCLUSIVE and unsure.looks == 0
    # 97% of 50,000 inferences is significantly below 98%
    assert g(stats(size=5, new_devices=cohort(5, agreement=0.97, inferences=10_000.0)), cfg(min_agreement=0.98)).outcome is Outcome.FAIL


def test_max_latency_p50_regression():
    """The p50 gate is judged as the p95 one, on the p50 column; p95 alone does not feed it."""
    g = GATES["max_latency_p50_regression"]
    c = cfg(max_latency_p50_regression=1.1)
    assert g(stats(), cfg()) is None
    only_p95 = g(stats(new_devices=cohort(30, p95=spread(10.0)), control_devices=cohort(30, 100, p95=spread(10.0))), c)
    assert only_p95.outcome is Outcome.INCONCLUSIVE and "0 new vs 0 control" in only_p95.detail
    ok = g(stats(new_devices=cohort(30, p50=spread(5.0)), control_devices=cohort(30, 100, p50=spread(5.0))), c)
    assert ok.outcome is Outcome.PASS and ok.judgement[0]["metric"] == "latency_p50"
    bad = g(stats(new_devices=cohort(30, p50=spread(6.0), p95=spread(10.0)), control_devices=cohort(30, 100, p50=spread(5.0), p95=spread(10.0))), c)
    assert bad.outcome is Outcome.FAIL and bad.measured == pytest.approx(1.2, abs=0.02) and "slower" in bad.detail
    with pytest.raises(Exception, match="p50 latencies"):
        cfg(max_latency_p50_regression=0.9)


def test_inconclusive_waits_then_gives_up_after_the_timeout():
    c = cfg(min_agreement=0.9, inconclusive_timeout_s=600)
    out, verdicts = evaluate(stats(succeeded=10, now=100), c)
    v = next(v for v in verdicts if v.gate == "min_agreement")
    assert out is Outcome.WAIT and v.outcome is Outcome.INCONCLUSIVE and v.since == 100  # waits; never a pass
    prev = {"min_agreement": v.to_dict()}
    assert evaluate(stats(succeeded=10, now=650, previous=prev), c)[0] is Outcome.WAIT
    out, verdicts = evaluate(stats(succeeded=10, now=700, previous=prev), c)
    assert out is Outcome.INCONCLUSIVE and "inconclusive for 600s of 600s" in next(v for v in verdicts if v.gate == "min_agreement").detail
    # a failure still wins over silence elsewhere
    assert evaluate(stats(failed=5, sent=5, now=700, previous=prev), c)[0] is Outcome.FAIL


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


def test_a_regression_on_one_profile_is_judged_in_its_stratum():
    """8 of 28 wave devices (profile arm) are 30% slower: pooled, the typical device is within
    the 10% bound; per stratum, arm fails and the detail names it."""
    g = GATES["max_latency_regression"]
    c = cfg(max_latency_regression=1.1)

    def devs(n, start, ms, profile):
        return [dev(start + i, p95=spread(ms)(i), profile=profile) for i in range(n)]

    import dataclasses

    def tagged(ds):
        return [dataclasses.replace(d, stratum=f"profile={d.profile}") for d in ds]

    new = tagged(devs(20, 0, 10.0, "x86") + devs(8, 100, 13.0, "arm"))
    ctl = tagged(devs(20, 200, 10.0, "x86") + devs(8, 300, 10.0, "arm"))
    v = g(stats(new_devices=new, control_devices=ctl), c)
    assert v.outcome is Outcome.FAIL and v.detail.startswith("latency_p95[profile=arm]: fail"), v.detail
    by = {j["metric"]: j for j in v.judgement}
    assert by["latency_p95"]["outcome"] == "pass" and by["latency_p95[profile=x86]"]["outcome"] == "pass"
    assert by["latency_p95[profile=arm]"]["effect"] == pytest.approx(1.3, abs=0.02)
    assert {j["alpha"] for j in v.judgement} == {0.05 / 5 / 3}  # pooled + 2 strata share the look's alpha
    # a stratum too small to judge alone is named, and still counts in the pool
    few = tagged(devs(20, 0, 10.0, "x86") + devs(2, 100, 13.0, "arm"))
    v = g(stats(new_devices=few, control_devices=ctl), c)
    assert v.outcome is Outcome.PASS and "strata too small to judge alone: profile=arm (2 new vs 8 control)" in v.detail


def test_the_inconclusive_limit_waits_for_devices_held_by_their_maintenance_window():
    c = cfg(min_agreement=0.9, inconclusive_timeout_s=600)
    _, verdicts = evaluate(stats(sent=10, now=100), c)
    prev = {"min_agreement": next(v for v in verdicts if v.gate == "min_agreement").to_dict()}
    held = evaluate(stats(pending=10, now=5000, previous=prev, held_for_window=10), c)
    assert held[0] is Outcome.WAIT and next(v for v in held[1] if v.gate == "min_agreement").since == 5000


def test_the_gate_holds_the_false_alarm_rate_over_its_looks_and_strata():
    """The latency gate itself (looks stored in the previous verdict, alpha split over the looks
    and over pooled + 2 strata), on identical cohorts growing look by look, with no effect bound
    (1.0): the share of 1000 seeds with any failure stays within alpha plus a binomial margin."""
    import math

    import numpy as np

    g = GATES["max_latency_regression"]
    c = cfg(max_latency_regression=1.0, judge_look_interval_s=60)
    rng = np.random.default_rng(18)
    seeds, fails = 1000, 0

    def make(n, start, profile):
        values = 10.0 * np.exp(rng.normal(0, 0.15, n))
        return [DeviceTelemetry(f"{profile}{start + i}", profile, 100.0, 0, 0, v * 100.0, 100.0, 0, 0, f"profile={profile}") for i, v in enumerate(values)]

    for _ in range(seeds):
        new = make(20, 0, "x86") + make(20, 0, "arm")
        ctl = make(20, 100, "x86") + make(20, 100, "arm")
        prev: dict = {}
        for look in range(5):
            k = 12 + 2 * look  # devices per stratum reporting so far
            cohort_new = new[:k] + new[20 : 20 + k]
            v = g(stats(size=len(cohort_new), now=100.0 + 60 * look, previous=prev, new_devices=cohort_new, control_devices=ctl[:k] + ctl[20 : 20 + k]), c)
            assert v.looks == look + 1
            prev = {"max_latency_regression": v.to_dict()}
            if v.outcome is Outcome.FAIL:
                fails += 1
                break
    rate = fails / seeds
    print(f"gate-level false alarms, 5 looks x (pooled + 2 strata), {seeds} seeds: {rate:.4f}")
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / seeds)
