"""The judge: does a wave on the new version differ from a control cohort by more than the noise?

Pure functions on per-device values (no database, no clock), used by the rollout gates
(:mod:`edgeops.fleet.rollouts.gates`). Each ``judge_*`` function answers PASS, FAIL or
INCONCLUSIVE with the p-value, the effect and both sample counts, so the reason a wave halted
or waits can be read off the verdict.

Tests (all one-sided, in the direction that would be a regression):

- continuous per-device values (latency p50/p95, mean top-1 confidence): the Mann-Whitney U
  test, normal approximation with tie and continuity correction (as ``scipy.stats.mannwhitneyu``
  with ``method="asymptotic"``); effect: the Hodges-Lehmann shift of the log values, i.e. the
  median over all (new, control) device pairs of new/control, so "1.20" reads "the typical device
  is 20% slower";
- rates (errors, NaN outputs per inference): the pooled two-proportion z test; effect: the
  difference of the rates;
- class mix (counts per output class): Pearson's chi-square test of homogeneity, divided by the
  Rao-Scott design effect when the per-device tables are given (inferences of one device are
  not independent); effect: the total variation distance between the two class distributions;
- a share against a fixed threshold (shadow agreement: the new model's answers that agree with
  the old model's on the same inputs; one cohort, the old model is the reference): the one-sample
  proportion z test, one-sided toward "below"; effect: the share.

A verdict FAILs only when the test is significant at the look's alpha *and* the effect is
past the configured bound (Kayenta's rule: a difference must be both real and large enough to
matter). Fewer devices than ``min_devices`` in either cohort is INCONCLUSIVE, never PASS.

Sequential looks: a wave is judged repeatedly while it runs. Each look that could fail the
wave spends ``alpha / max_looks`` (Bonferroni over a fixed maximum number of looks), so the
chance of a false alarm over all looks of a wave is at most ``alpha`` whatever the correlation
between looks; after ``max_looks`` the verdict is final. Pocock's boundaries would be less
conservative but assume equally spaced looks, which a wave's ticks are not.

``scipy`` is not a dependency of the console, so the distributions used (normal, chi-square)
are computed here from :mod:`math`; tests check them against known values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Alternative = Literal["greater", "less", "two-sided"]
PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"

DEFAULT_ALPHA = 0.05
DEFAULT_MAX_LOOKS = 5
DEFAULT_MIN_DEVICES = 5


# -- distributions ---------------------------------------------------------------------------
def norm_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _gammainc_upper(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) (series below a + 1, continued fraction above)."""
    if x <= 0:
        return 1.0
    lg = math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - lg))
    # Lentz's continued fraction for Q
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(-x + a * math.log(x) - lg) * h)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) (Lentz's continued fraction, Numerical Recipes' betacf)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast below this point
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (tiny if abs(d) < tiny else d)
    h = d
    for m in range(1, 10_000):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)), -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (tiny if abs(d) < tiny else d)
            c = 1.0 + num / c
            c = tiny if abs(c) < tiny else c
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return min(1.0, max(0.0, front * h))


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"Student's t needs degrees of freedom above 0, got {df}")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def chi2_sf(x: float, df: int) -> float:
    """P(X > x) for a chi-square X with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"chi-square needs at least 1 degree of freedom, got {df}")
    return _gammainc_upper(df / 2.0, x / 2.0)


# -- tests -----------------------------------------------------------------------------------
def rankdata(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(average ranks from 1, sizes of the groups of tied values)."""
    order = np.argsort(values, kind="mergesort")
    sorted_v = values[order]
    _, start, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0  # mean of ranks start+1 .. start+count
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = np.repeat(avg, counts)
    return ranks, counts


@dataclass(frozen=True)
class TestResult:
    """A test statistic, its z (where normal) and p-value."""

    statistic: float
    p_value: float
    z: float | None = None


def mann_whitney(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, alternative: Alternative = "two-sided") -> TestResult:
    """Mann-Whitney U of ``x`` against ``y`` (normal approximation, tie and continuity corrected).

    ``statistic`` is U of ``x`` (pairs where x wins, ties count half); ``greater`` tests whether
    x tends to be larger than y. Matches ``scipy.stats.mannwhitneyu(x, y, method="asymptotic")``.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError(f"Mann-Whitney needs values in both samples (got {n1} and {n2})")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("Mann-Whitney got a value that is not finite")
    ranks, ties = rankdata(np.concatenate([a, b]))
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    n = n1 + n2
    mu = n1 * n2 / 2.0
    tie_term = float((ties**3 - ties).sum()) / (n * (n - 1)) if n > 1 else 0.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    if var <= 0:  # every value equal: no evidence either way
        return TestResult(u1, 1.0, 0.0)
    sd = math.sqrt(var)
    if alternative == "greater":
        z = (u1 - mu - 0.5) / sd
        p = norm_sf(z)
    elif alternative == "less":
        z = (n1 * n2 - u1 - mu - 0.5) / sd
        p = norm_sf(z)
    elif alternative == "two-sided":
        z = (max(u1, n1 * n2 - u1) - mu - 0.5) / sd
        p = min(1.0, 2.0 * norm_sf(z))
    else:
        raise ValueError(f"alternative {alternative!r}: greater, less or two-sided")
    return TestResult(u1, p, z)


def hodges_lehmann(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Median of all pairwise differences x_i - y_j (the shift Mann-Whitney estimates)."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return float(np.median(np.subtract.outer(a, b)))


def two_proportions(k1: float, n1: float, k2: float, n2: float, alternative: Alternative = "greater") -> TestResult:
    """Pooled two-proportion z test of k1/n1 against k2/n2 (``greater``: the first is higher)."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError(f"two-proportion test needs trials in both samples (got {n1} and {n2})")
    if not (0 <= k1 <= n1 and 0 <= k2 <= n2):
        raise ValueError(f"successes must lie in [0, trials] (got {k1}/{n1} and {k2}/{n2})")
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if var <= 0:  # both 0% or both 100%
        return TestResult(p1 - p2, 1.0, 0.0)
    z = (p1 - p2) / math.sqrt(var)
    if alternative == "greater":
        p = norm_sf(z)
    elif alternative == "less":
        p = norm_sf(-z)
    elif alternative == "two-sided":
        p = min(1.0, 2.0 * norm_sf(abs(z)))
    else:
        raise ValueError(f"alternative {alternative!r}: greater, less or two-sided")
    return TestResult(p1 - p2, p, z)


def chi_square_homogeneity(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[TestResult, int]:
    """Pearson's chi-square test that two count tables (class -> count) share one distribution.

    Returns (result, degrees of freedom); classes neither table saw are left out.
    """
    classes = sorted(k for k in set(a) | set(b) if a.get(k, 0) + b.get(k, 0) > 0)
    na, nb = float(sum(a.get(k, 0) for k in classes)), float(sum(b.get(k, 0) for k in classes))
    if na <= 0 or nb <= 0:
        raise ValueError(f"chi-square needs counts in both tables (got {na:g} and {nb:g})")
    df = len(classes) - 1
    if df < 1:
        return TestResult(0.0, 1.0), 0
    total = na + nb
    stat = 0.0
    for k in classes:
        col = a.get(k, 0) + b.get(k, 0)
        for n, obs in ((na, a.get(k, 0)), (nb, b.get(k, 0))):
            exp = n * col / total
            stat += (obs - exp) ** 2 / exp
    return TestResult(stat, chi2_sf(stat, df)), df


def total_variation(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Half the L1 distance between the two normalized class distributions (0 same, 1 disjoint)."""
    na, nb = float(sum(a.values())), float(sum(b.values()))
    if na <= 0 or nb <= 0:
        return 0.0
    return 0.5 * sum(abs(a.get(k, 0) / na - b.get(k, 0) / nb) for k in set(a) | set(b))


# -- sequential plan -------------------------------------------------------------------------
@dataclass(frozen=True)
class LookPlan:
    """A fixed maximum number of looks sharing ``alpha`` (Bonferroni)."""

    alpha: float = DEFAULT_ALPHA
    max_looks: int = DEFAULT_MAX_LOOKS

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha {self.alpha} must lie in (0, 1)")
        if self.max_looks < 1:
            raise ValueError(f"max_looks {self.max_looks} must be at least 1")

    @property
    def alpha_per_look(self) -> float:
        """What one look may spend: alpha / max_looks."""
        return self.alpha / self.max_looks


# -- verdicts --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Judgement:
    """One metric judged: the outcome and everything it was decided from."""

    metric: str
    outcome: str  # PASS, FAIL or INCONCLUSIVE
    p_value: float | None
    effect: float | None
    bound: float
    n_new: int
    n_control: int
    alpha: float  # the alpha of this look
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored in the gate verdict)."""
        return asdict(self)


def _too_few(metric: str, n_new: int, n_control: int, min_devices: int, bound: float, alpha: float, what: str = "devices") -> Judgement | None:
    if n_new >= min_devices and n_control >= min_devices:
        return None
    return Judgement(
        metric, INCONCLUSIVE, None, None, bound, n_new, n_control, alpha,
        f"{n_new} new vs {n_control} control {what}; at least {min_devices} of each are needed",
    )


def judge_continuous(
    metric: str,
    new: Sequence[float] | np.ndarray,
    control: Sequence[float] | np.ndarray,
    max_regression: float,
    alpha: float,
    min_devices: int = DEFAULT_MIN_DEVICES,
    higher_is_worse: bool = True,
) -> Judgement:
    """Per-device values (all > 0) of the wave against the control cohort.

    FAIL when Mann-Whitney (one-sided, toward worse) has p < ``alpha`` and the Hodges-Lehmann
    ratio new/control is worse than ``1 + max_regression`` (higher is worse) or
    ``1 - max_regression`` (lower is worse); INCONCLUSIVE with fewer than ``min_devices`` in
    either cohort; PASS otherwise. ``effect`` is the ratio.
    """
    a, b = np.asarray(new, dtype=float), np.asarray(control, dtype=float)
    bound = 1.0 + max_regression if higher_is_worse else 1.0 - max_regression
    few = _too_few(metric, len(a), len(b), min_devices, bound, alpha)
    if few:
        return few
    if np.any(a <= 0) or np.any(b <= 0) or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError(f"{metric}: per-device values must be finite and above 0")
    test = mann_whitney(a, b, "greater" if higher_is_worse else "less")
    ratio = math.exp(hodges_lehmann(np.log(a), np.log(b)))
    worse = ratio > bound if higher_is_worse else ratio < bound
    fail = test.p_value < alpha and worse
    if metric.startswith("latency"):
        word = "slower" if ratio >= 1 else "faster"
    else:
        word = "higher" if ratio >= 1 else "lower"
    detail = (
        f"typical device {abs(ratio - 1) * 100:.1f}% {word} (Hodges-Lehmann ratio {ratio:.3f}, bound {bound:.3f}); "
        f"Mann-Whitney p={test.p_value:.2g} vs alpha {alpha:.3g}; {len(a)} new vs {len(b)} control devices"
    )
    return Judgement(metric, FAIL if fail else PASS, test.p_value, ratio, bound, len(a), len(b), alpha, detail)


def judge_rate(
    metric: str,
    k_new: float,
    n_new: float,
    k_control: float,
    n_control: float,
    devices_new: int,
    devices_control: int,
    max_excess: float,
    alpha: float,
    min_devices: int = DEFAULT_MIN_DEVICES,
    per_device: tuple[Sequence[tuple[float, float]], Sequence[tuple[float, float]]] | None = None,
) -> Judgement:
    """A rate (events per trial, e.g. errors per inference) of the wave against the control.

    FAIL when the two-proportion z test (one-sided: the new rate is higher) has p < ``alpha``
    and the new rate exceeds the control's by more than ``max_excess``; INCONCLUSIVE with fewer
    than ``min_devices`` reporting devices, or no trials, in either cohort. With ``per_device``
    ((events, trials) of each device, per cohort) z is divided by the square root of the devices'
    design effect (:func:`design_effect`) and read on Student's t with devices - 2 degrees of
    freedom: one device's inferences are not independent trials.
    """
    few = _too_few(metric, devices_new, devices_control, min_devices, max_excess, alpha)
    if few:
        return few
    if n_new <= 0 or n_control <= 0:
        return Judgement(metric, INCONCLUSIVE, None, None, max_excess, devices_new, devices_control, alpha, f"no trials: {n_new:g} new vs {n_control:g} control")
    test = two_proportions(k_new, n_new, k_control, n_control, "greater")
    deff = 1.0
    if per_device is not None:
        deff = design_effect([[{"e": k, "o": n - k} for k, n in side] for side in per_device])
        df = len(per_device[0]) + len(per_device[1]) - 2
        if test.z is not None and df > 0:
            z = test.z / math.sqrt(deff)
            test = TestResult(test.statistic, t_sf(z, df), z)
    excess = k_new / n_new - k_control / n_control
    fail = test.p_value < alpha and excess > max_excess
    detail = (
        f"{k_new / n_new:.4%} new ({k_new:g}/{n_new:g}) vs {k_control / n_control:.4%} control ({k_control:g}/{n_control:g}), "
        f"excess {excess:+.4%} vs bound {max_excess:.4%}; two-proportion p={test.p_value:.2g}{f' (design effect {deff:.2f})' if per_device is not None else ''} vs alpha {alpha:.3g}; "
        f"{devices_new} new vs {devices_control} control devices"
    )
    return Judgement(metric, FAIL if fail else PASS, test.p_value, excess, max_excess, devices_new, devices_control, alpha, detail)


def design_effect(cohorts: Sequence[Sequence[Mapping[str, float]]]) -> float:
    """The Rao-Scott first-order design effect of class proportions estimated from devices.

    Each cohort is a list of per-device count tables (class -> count). Inferences of one device
    are not independent (its camera, its scene, its users), so the pooled proportions vary more
    than the binomial variance the chi-square test assumes. Per cohort and class, the ratio of
    the between-device (cluster) variance of the pooled proportion to the binomial one; the
    mean over classes and cohorts, weighted by the binomial variance; at least 1 (never makes
    the test more liberal). 1.0 when a cohort has fewer than 2 devices.
    """
    num = den = 0.0
    for devices in cohorts:
        m = len(devices)
        if m < 2:
            return 1.0
        totals = [float(sum(d.values())) for d in devices]
        n = sum(totals)
        if n <= 0:
            return 1.0
        classes = set().union(*(d.keys() for d in devices))
        for k in classes:
            p = sum(d.get(k, 0.0) for d in devices) / n
            binom = p * (1 - p) / n
            if binom <= 0:
                continue
            cluster = m / (m - 1) * sum((d.get(k, 0.0) - p * t) ** 2 for d, t in zip(devices, totals)) / (n * n)
            num += cluster
            den += binom
    return max(1.0, num / den) if den > 0 else 1.0


def judge_mix(
    metric: str,
    new: Mapping[str, float],
    control: Mapping[str, float],
    devices_new: int,
    devices_control: int,
    max_distance: float,
    alpha: float,
    min_devices: int = DEFAULT_MIN_DEVICES,
    per_device: tuple[Sequence[Mapping[str, float]], Sequence[Mapping[str, float]]] | None = None,
) -> Judgement:
    """Output class mix (class -> count) of the wave against the control.

    FAIL when the chi-square test of homogeneity has p < ``alpha`` and the total variation
    distance between the mixes exceeds ``max_distance``; INCONCLUSIVE below ``min_devices``.
    With ``per_device`` (the count tables of each cohort's devices) the statistic is divided by
    the Rao-Scott design effect (:func:`design_effect`), so devices that differ from one another
    in what they see do not make identical versions look different.
    """
    few = _too_few(metric, devices_new, devices_control, min_devices, max_distance, alpha)
    if few:
        return few
    if sum(new.values()) <= 0 or sum(control.values()) <= 0:
        return Judgement(metric, INCONCLUSIVE, None, None, max_distance, devices_new, devices_control, alpha, "no class counts in one of the cohorts")
    test, df = chi_square_homogeneity(new, control)
    deff = design_effect(per_device) if per_device is not None else 1.0
    if deff > 1.0 and df >= 1:
        test = TestResult(test.statistic / deff, chi2_sf(test.statistic / deff, df))
    tvd = total_variation(new, control)
    fail = test.p_value < alpha and tvd > max_distance
    detail = (
        f"class mix differs by {tvd:.3f} (total variation, bound {max_distance:.3f}); chi-square {test.statistic:.3g} "
        f"on {df} df{f' (Rao-Scott, design effect {deff:.2f})' if per_device is not None else ''}, p={test.p_value:.2g} vs alpha {alpha:.3g}; "
        f"{devices_new} new vs {devices_control} control devices"
    )
    return Judgement(metric, FAIL if fail else PASS, test.p_value, tvd, max_distance, devices_new, devices_control, alpha, detail)


def one_proportion(k: float, n: float, p0: float, deff: float = 1.0, clusters: int = 0) -> TestResult:
    """One-sample z test that the proportion behind k/n is below ``p0`` (one-sided: ``p_value``
    is the chance of a share this low or lower were the true share ``p0``). When trials come in
    ``clusters`` (devices), the binomial variance is multiplied by the design effect ``deff``
    (>= 1) and z is read on Student's t with clusters - 1 degrees of freedom (the variance is
    estimated from that many devices)."""
    if n <= 0:
        raise ValueError(f"one-proportion test needs trials (got {n})")
    if not 0 <= k <= n:
        raise ValueError(f"successes must lie in [0, trials] (got {k}/{n})")
    if not 0 <= p0 <= 1:
        raise ValueError(f"the proportion tested against must lie in [0, 1] (got {p0})")
    share = k / n
    var = p0 * (1 - p0) / n * max(1.0, deff)
    if var <= 0:  # p0 is 0 or 1: any share on the wrong side of it is certain evidence
        below = share < p0
        return TestResult(share, 0.0 if below else 1.0, -math.inf if below else 0.0)
    z = (share - p0) / math.sqrt(var)
    return TestResult(share, t_sf(-z, clusters - 1) if clusters > 1 else norm_sf(-z), z)


def judge_at_least(
    metric: str,
    k: float,
    n: float,
    devices: int,
    threshold: float,
    alpha: float,
    min_devices: int = DEFAULT_MIN_DEVICES,
    per_device: Sequence[tuple[float, float]] | None = None,
) -> Judgement:
    """A share (e.g. shadow agreement: agreeing inferences k of n) of the wave against a fixed
    threshold, with the one-sample proportion z test (:func:`one_proportion`). With
    ``per_device`` ((k_i, n_i) of each device) the variance is widened by the design effect of
    devices (:func:`design_effect`): one device's inferences are not independent trials.

    PASS when the share is at least ``threshold``; FAIL when it is below *and* significantly so
    (p < ``alpha``); INCONCLUSIVE when below but within the noise (more data decides it), or
    with fewer than ``min_devices`` reporting devices or no trials. ``effect`` is the share.
    """
    if devices < min_devices:
        return Judgement(metric, INCONCLUSIVE, None, None, threshold, devices, 0, alpha, f"{devices} devices reported; at least {min_devices} are needed")
    if n <= 0:
        return Judgement(metric, INCONCLUSIVE, None, None, threshold, devices, 0, alpha, "no trials reported")
    deff = design_effect([[{"y": ki, "n": ni - ki} for ki, ni in per_device]]) if per_device else 1.0
    test = one_proportion(k, n, threshold, deff, len(per_device) if per_device else 0)
    share = k / n
    if share >= threshold:
        outcome = PASS
    else:
        outcome = FAIL if test.p_value < alpha else INCONCLUSIVE
    detail = (
        f"{share:.4%} ({k:.0f} of {n:.0f}) vs threshold {threshold:.4%}; one-proportion p={test.p_value:.2g}{f' (design effect {deff:.2f})' if per_device else ''} "
        f"(below the threshold) vs alpha {alpha:.3g}; {devices} devices"
    )
    return Judgement(metric, outcome, test.p_value, share, threshold, devices, 0, alpha, detail)
