"""The judge's statistics: the tests against known values, and its decisions on synthetic cohorts
(false-alarm rate over many seeds, power on a 20% regression, too few devices, sequential looks)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgeops.fleet.rollouts import judge as j

ALPHA = 0.05
SEEDS = 2000


def margin(p: float, n: int) -> float:
    """Three binomial standard errors of a rate ``p`` measured over ``n`` seeds."""
    return 3.0 * math.sqrt(p * (1 - p) / n)


# -- the tests against known values (computed with scipy 1.17: mannwhitneyu(method="asymptotic"),
#    chi2.sf, chi2_contingency(correction=False)) -----------------------------------------------
X = [12, 9, 11, 10, 14, 9, 12, 10, 10, 13, 8, 11]
Y = [13, 12, 15, 11, 14, 12, 16, 13, 12, 11]


@pytest.mark.parametrize("alternative,u,p", [("two-sided", 22.5, 0.0135970869), ("less", 22.5, 0.0067985435), ("greater", 22.5, 0.9943684903)])
def test_mann_whitney_known_values(alternative, u, p):
    r = j.mann_whitney(X, Y, alternative)
    assert r.statistic == u and r.p_value == pytest.approx(p, rel=1e-6)


def test_mann_whitney_without_ties_and_all_tied():
    r = j.mann_whitney([1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0], "less")
    assert r.statistic == 0.0 and r.p_value == pytest.approx(0.0060928902, rel=1e-6)
    same = j.mann_whitney([3.0] * 4, [3.0] * 6, "greater")
    assert same.p_value == 1.0  # every value tied: no evidence
    with pytest.raises(ValueError, match="both samples"):
        j.mann_whitney([], [1.0])
    with pytest.raises(ValueError, match="not finite"):
        j.mann_whitney([float("nan")], [1.0])


def test_mann_whitney_matches_scipy_on_random_samples():
    st = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(7)
    for _ in range(50):
        x = np.round(rng.normal(10, 2, rng.integers(3, 40)), 0)  # rounded: many ties
        y = np.round(rng.normal(10.5, 2, rng.integers(3, 40)), 0)
        for alt in ("greater", "less", "two-sided"):
            ours, ref = j.mann_whitney(x, y, alt), st.mannwhitneyu(x, y, alternative=alt, method="asymptotic")
            assert ours.statistic == ref.statistic and ours.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("x,df,sf", [(3.84, 1, 0.0500435212), (10.0, 3, 0.0185661355), (0.5, 4, 0.9735009788), (50.0, 10, 2.669083425e-07), (100.0, 7, 1.07879797e-18)])
def test_chi2_sf_known_values(x, df, sf):
    assert j.chi2_sf(x, df) == pytest.approx(sf, rel=1e-6)


def test_chi_square_homogeneity_known_value():
    r, df = j.chi_square_homogeneity({"cat": 40, "dog": 35, "bird": 25}, {"cat": 30, "dog": 45, "bird": 20, "fish": 5})
    assert df == 3 and r.statistic == pytest.approx(8.2341269841) and r.p_value == pytest.approx(0.0414128884, rel=1e-6)


def test_two_proportions_known_value():
    r = j.two_proportions(30, 1000, 20, 1000, "greater")  # pooled 2.5%: z = 0.01 / sqrt(0.025 * 0.975 * 0.002)
    assert r.z == pytest.approx(1.4322297, rel=1e-6) and r.p_value == pytest.approx(0.0760390, rel=1e-5)
    assert j.two_proportions(0, 100, 0, 100).p_value == 1.0


def test_hodges_lehmann_and_total_variation():
    assert j.hodges_lehmann([11.0, 12.0, 13.0], [1.0, 2.0, 3.0]) == 10.0
    assert j.total_variation({"a": 50, "b": 50}, {"a": 100}) == pytest.approx(0.5)


def test_look_plan_is_bonferroni():
    assert j.LookPlan(0.05, 5).alpha_per_look == pytest.approx(0.01)
    with pytest.raises(ValueError, match="max_looks"):
        j.LookPlan(0.05, 0)


# -- decisions on synthetic cohorts ----------------------------------------------------------
def devices(rng: np.random.Generator, n: int, median_ms: float = 20.0, spread: float = 0.15) -> np.ndarray:
    """Per-device p95 latencies: devices differ (load, thermal state) by a lognormal factor."""
    return median_ms * np.exp(rng.normal(0.0, spread, n))


def test_identical_cohorts_false_alarm_rate_is_at_most_alpha():
    """Measured over 2000 seeds: with no effect bound the one-sided test alone fails about alpha
    of identical cohorts (the test is calibrated, neither loose nor uselessly strict); with the
    default 10% bound fewer still."""
    rng = np.random.default_rng(2026)
    raw = bounded = passed = 0
    for _ in range(SEEDS):
        new, ctl = devices(rng, 30), devices(rng, 30)
        raw += j.judge_continuous("latency_p95", new, ctl, max_regression=0.0, alpha=ALPHA).outcome == j.FAIL
        v = j.judge_continuous("latency_p95", new, ctl, max_regression=0.10, alpha=ALPHA)
        bounded += v.outcome == j.FAIL
        passed += v.outcome == j.PASS
    raw_rate, bounded_rate = raw / SEEDS, bounded / SEEDS
    print(f"false alarms over {SEEDS} seeds, alpha {ALPHA}: test alone {raw_rate:.4f}, with the 10% bound {bounded_rate:.4f}")
    assert ALPHA / 2 <= raw_rate <= ALPHA + margin(ALPHA, SEEDS)
    assert bounded_rate <= raw_rate and passed + bounded == SEEDS


def test_rate_false_alarm_rate_is_at_most_alpha():
    rng = np.random.default_rng(11)
    fails = 0
    for _ in range(SEEDS):
        n_new, n_ctl = 30 * 400, 30 * 400
        k_new, k_ctl = rng.binomial(n_new, 0.01), rng.binomial(n_ctl, 0.01)
        fails += j.judge_rate("error_rate", k_new, n_new, k_ctl, n_ctl, 30, 30, max_excess=0.0, alpha=ALPHA).outcome == j.FAIL
    rate = fails / SEEDS
    print(f"error-rate false alarms over {SEEDS} seeds: {rate:.4f}")
    assert rate <= ALPHA + margin(ALPHA, SEEDS)


def test_twenty_percent_latency_regression_on_30_devices_fails():
    rng = np.random.default_rng(3)
    v = j.judge_continuous("latency_p95", devices(rng, 30, 24.0), devices(rng, 30, 20.0), max_regression=0.10, alpha=j.LookPlan().alpha_per_look)
    assert v.outcome == j.FAIL and v.effect > 1.1 and v.p_value < 0.01 and (v.n_new, v.n_control) == (30, 30)
    assert "slower" in v.detail and "Mann-Whitney p=" in v.detail
    # and it is not luck of one seed: the power over 300 seeds, at the per-look alpha of 5 looks
    rng = np.random.default_rng(4)
    caught = sum(
        j.judge_continuous("latency_p95", devices(rng, 30, 24.0), devices(rng, 30, 20.0), 0.10, j.LookPlan().alpha_per_look).outcome == j.FAIL for _ in range(300)
    )
    assert caught / 300 >= 0.9, caught


def test_three_devices_are_inconclusive():
    rng = np.random.default_rng(5)
    v = j.judge_continuous("latency_p95", devices(rng, 3, 40.0), devices(rng, 30), 0.10, ALPHA)
    assert v.outcome == j.INCONCLUSIVE and v.p_value is None and v.n_new == 3 and "at least 5" in v.detail
    assert j.judge_rate("error_rate", 50, 100, 0, 100, 3, 30, 0.01, ALPHA).outcome == j.INCONCLUSIVE
    assert j.judge_mix("class_mix", {"a": 10}, {"b": 10}, 30, 2, 0.1, ALPHA).outcome == j.INCONCLUSIVE


def test_lower_is_worse_metric():
    """Mean top-1 confidence: a drop is the regression."""
    rng = np.random.default_rng(6)
    ctl = 0.9 * np.exp(rng.normal(0, 0.02, 30))
    assert j.judge_continuous("confidence", 0.7 * np.exp(rng.normal(0, 0.02, 30)), ctl, 0.05, 0.01, higher_is_worse=False).outcome == j.FAIL
    assert j.judge_continuous("confidence", 1.1 * ctl, ctl, 0.05, 0.01, higher_is_worse=False).outcome == j.PASS  # better is never a failure


def test_rate_and_mix_regressions_fail():
    assert j.judge_rate("error_rate", 300, 12000, 100, 12000, 30, 30, 0.005, 0.01).outcome == j.FAIL
    assert j.judge_rate("error_rate", 130, 12000, 100, 12000, 30, 30, 0.005, 0.01).outcome == j.PASS  # within the bound
    mix = j.judge_mix("class_mix", {"a": 500, "b": 500}, {"a": 800, "b": 200}, 30, 30, 0.1, 0.01)
    assert mix.outcome == j.FAIL and mix.effect == pytest.approx(0.3)


def test_sequential_looks_hold_the_false_alarm_rate():
    """A wave judged at 5 looks as its devices report (10, 15, ... 30 of each cohort): spending
    alpha at every look raises the chance of any false alarm well above alpha; Bonferroni's
    alpha / 5 per look keeps it at most alpha (measured over 2000 seeds)."""
    looks = 5
    plan = j.LookPlan(ALPHA, looks)
    rng = np.random.default_rng(99)
    naive = corrected = 0
    for _ in range(SEEDS):
        new, ctl = devices(rng, 30), devices(rng, 30)
        sizes = [10 + 5 * k for k in range(looks)]
        naive += any(j.judge_continuous("latency_p95", new[:n], ctl[:n], 0.0, ALPHA).outcome == j.FAIL for n in sizes)
        corrected += any(j.judge_continuous("latency_p95", new[:n], ctl[:n], 0.0, plan.alpha_per_look).outcome == j.FAIL for n in sizes)
    naive_rate, corrected_rate = naive / SEEDS, corrected / SEEDS
    print(f"any false alarm over {looks} looks, {SEEDS} seeds: alpha at each look {naive_rate:.4f}, alpha/{looks} per look {corrected_rate:.4f}")
    assert naive_rate > ALPHA + margin(ALPHA, SEEDS)  # the inflation is real and measurable here
    assert corrected_rate <= ALPHA + margin(ALPHA, SEEDS)


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="above 0"):
        j.judge_continuous("latency_p95", [0.0] * 5, [1.0] * 5, 0.1, ALPHA)


def test_one_proportion_and_judge_at_least():
    """Shadow agreement against its threshold: one-sample proportion z test, one-sided toward
    below (issue 18)."""
    import math

    from edgeops.fleet.rollouts.judge import FAIL, INCONCLUSIVE, PASS, judge_at_least, one_proportion

    # 940 of 1000 vs 0.95: z = -0.01 / sqrt(0.95 * 0.05 / 1000) = -1.4510..., p = P(Z < z)
    t = one_proportion(940, 1000, 0.95)
    assert t.z == pytest.approx(-0.01 / math.sqrt(0.95 * 0.05 / 1000)) and t.p_value == pytest.approx(0.07339, abs=1e-4)
    assert one_proportion(10, 10, 1.0).p_value == 1.0 and one_proportion(9, 10, 1.0).p_value == 0.0
    assert judge_at_least("agreement", 960, 1000, 5, 0.95, 0.01).outcome == PASS
    assert judge_at_least("agreement", 940, 1000, 5, 0.95, 0.01).outcome == INCONCLUSIVE  # below, within the noise
    assert judge_at_least("agreement", 9000, 10000, 5, 0.95, 0.01).outcome == FAIL
    assert judge_at_least("agreement", 900, 1000, 4, 0.95, 0.01).outcome == INCONCLUSIVE  # 4 < 5 devices
    with pytest.raises(ValueError, match="trials"):
        one_proportion(1, 0, 0.5)


def test_class_mix_holds_its_false_alarm_rate_when_devices_differ():
    """Devices see different inputs (each its own class mix, Dirichlet around one mean), both
    versions identical: the plain chi-square on pooled inferences reads the between-device
    spread as a difference (measured ~28% false alarms at alpha 0.01 in 1000 seeds); divided by
    the Rao-Scott design effect it stays near alpha. No effect bound, so only the test decides."""
    rng = np.random.default_rng(18)
    seeds, alpha = 500, 0.01

    def cohort(n):
        devs = [{str(k): float(c) for k, c in enumerate(rng.multinomial(200, rng.dirichlet(np.full(10, 20.0)))) if c} for _ in range(n)]
        total: dict[str, float] = {}
        for d in devs:
            for k, c in d.items():
                total[k] = total.get(k, 0.0) + c
        return total, devs

    plain = corrected = 0
    for _ in range(seeds):
        (a, da), (b, db) = cohort(20), cohort(20)
        plain += j.judge_mix("class_mix", a, b, 20, 20, 0.0, alpha).outcome == j.FAIL
        v = j.judge_mix("class_mix", a, b, 20, 20, 0.0, alpha, per_device=(da, db))
        corrected += v.outcome == j.FAIL
    print(f"class mix false alarms over {seeds} seeds at alpha {alpha}: plain {plain / seeds:.3f}, Rao-Scott {corrected / seeds:.3f}")
    assert plain / seeds > 0.1  # the problem the correction answers
    assert corrected / seeds <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / seeds)
    assert "Rao-Scott, design effect" in v.detail
    assert j.design_effect([[{"a": 5, "b": 5}, {"a": 5, "b": 5}], [{"a": 5, "b": 5}, {"a": 5, "b": 5}]]) == 1.0  # no spread: never below 1


def test_agreement_holds_its_false_alarm_rate_when_devices_differ():
    """Each device's true agreement varies around the threshold itself (Beta with mean 0.95):
    trials counted as independent fail far more often than alpha; with the design effect of
    devices the one-proportion test stays near it."""
    rng = np.random.default_rng(18)
    seeds, alpha, t = 500, 0.01, 0.95
    plain = corrected = 0
    for _ in range(seeds):
        per = [(float(rng.binomial(500, rng.beta(95, 5))), 500.0) for _ in range(20)]
        k, n = sum(x for x, _ in per), sum(y for _, y in per)
        plain += j.judge_at_least("agreement", k, n, 20, t, alpha).outcome == j.FAIL
        corrected += j.judge_at_least("agreement", k, n, 20, t, alpha, per_device=per).outcome == j.FAIL
    print(f"agreement false alarms over {seeds} seeds at alpha {alpha}: plain {plain / seeds:.3f}, with design effect {corrected / seeds:.3f}")
    assert plain / seeds > 2 * alpha
    assert corrected / seeds <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / seeds)
    # a real drop still fails: devices at 0.90 against 0.95
    per = [(float(rng.binomial(500, rng.beta(90, 10))), 500.0) for _ in range(20)]
    assert j.judge_at_least("agreement", sum(x for x, _ in per), 10_000, 20, t, alpha, per_device=per).outcome == j.FAIL


def test_student_t_tail_known_values():
    """Against scipy.stats.t.sf (not a console dependency)."""
    assert j.t_sf(2.0, 10) == pytest.approx(0.03669401738537018, rel=1e-10)
    assert j.t_sf(3.5, 30) == pytest.approx(0.0007384037188221266, rel=1e-9)
    assert j.t_sf(-1.5, 4) == pytest.approx(0.896, rel=1e-9)
    assert j.t_sf(0.0, 7) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="degrees of freedom"):
        j.t_sf(1.0, 0)


def test_error_rate_holds_its_false_alarm_rate_when_devices_differ():
    """Each device's error rate varies (Beta with mean 2%), both versions identical: pooled
    inferences as independent trials fail far more often than alpha; with the devices' design
    effect and Student's t the two-proportion test stays near it, and a real excess still fails."""
    rng = np.random.default_rng(18)
    seeds, alpha = 500, 0.01

    def cohort(mean):
        return [(float(rng.binomial(500, rng.beta(4 * mean / (1 - mean), 4))), 500.0) for _ in range(20)]

    plain = corrected = 0
    for _ in range(seeds):
        a, b = cohort(0.02), cohort(0.02)
        ka, kb = sum(k for k, _ in a), sum(k for k, _ in b)
        plain += j.judge_rate("error_rate", ka, 10_000, kb, 10_000, 20, 20, 0.0, alpha).outcome == j.FAIL
        corrected += j.judge_rate("error_rate", ka, 10_000, kb, 10_000, 20, 20, 0.0, alpha, per_device=(a, b)).outcome == j.FAIL
    print(f"error rate false alarms over {seeds} seeds at alpha {alpha}: plain {plain / seeds:.3f}, with design effect {corrected / seeds:.3f}")
    assert plain / seeds > 2 * alpha
    assert corrected / seeds <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / seeds)
    a, b = cohort(0.10), cohort(0.02)
    v = j.judge_rate("error_rate", sum(k for k, _ in a), 10_000, sum(k for k, _ in b), 10_000, 20, 20, 0.01, alpha, per_device=(a, b))
    assert v.outcome == j.FAIL and "design effect" in v.detail
