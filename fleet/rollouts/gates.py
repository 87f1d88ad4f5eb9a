"""Gate evaluators: decide from a wave's numbers whether it passes, fails or must wait.

A gate is a function ``(WaveStats, RolloutSettings) -> Verdict | None`` registered by name
with :func:`gate`; None means "not configured for this rollout". A gate says PASS, FAIL, WAIT
(not yet: reporting, bake time) or INCONCLUSIVE (too little data to decide: never a pass). A
wave passes when every configured gate says PASS, halts as soon as one says FAIL, and waits
otherwise; a gate INCONCLUSIVE for ``inconclusive_timeout_s`` makes the wave give up
(:func:`evaluate` answers INCONCLUSIVE and the reconciler pauses the rollout with the reason).
Adding a gate is one decorated function; its verdicts are stored with the wave (the state of
the judged gates' looks with them, so a restarted console resumes the judgement) and exported
to /metrics.

The telemetry gates are judged (:mod:`edgeops.fleet.rollouts.judge`): the wave's devices on the
new version against a control cohort of selected devices still on the old version over the same
window, a two-sample test on per-device values plus an effect bound, at most
``judge_max_looks`` looks per wave spaced ``judge_look_interval_s`` apart, each spending
``judge_alpha / judge_max_looks``.

A gate declares the inputs it reads beyond the wave's counts and times (``reads``, names of
:func:`wave_input` providers) and when it is configured (``when``): the reconciler asks the
database only for the inputs of the gates configured for the rollout (:func:`inputs_needed`).
A provider returns values for :class:`WaveStats` fields, or for ``WaveStats.extra`` under any
other key, so a gate reading a new kind of data is a provider and a gate, nothing in the
reconciler (see :mod:`edgeops.fleet.rollouts.inputs` for the built-in ones).

Failure-type gates fail early: a failure rate over the wave's *size* can only grow, so once it
is above the threshold no later report can rescue the wave.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, TypeVar

from edgeops.fleet.rollouts import judge
from edgeops.fleet.rollouts.records import DeviceTelemetry
from edgeops.fleet.rollouts.settings import RolloutSettings
from edgeops.fleet.rollouts.status import FAILED_ASSIGNMENT, FINAL_ASSIGNMENT, AssignmentStatus


class Outcome(str, Enum):
    """A gate's verdict."""

    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"
    INCONCLUSIVE = "inconclusive"


@dataclass
class Verdict:
    """One gate's verdict, with what was measured against which threshold.

    Judged gates add the judgement (p-value, effect, sample counts, alpha of the look) and their
    look count; ``since`` is when a gate became INCONCLUSIVE (kept while it stays so).
    """

    gate: str
    outcome: Outcome
    measured: float | None = None
    threshold: float | None = None
    detail: str = ""
    judgement: list[dict[str, Any]] | None = None
    looks: int = 0
    looked_at: float | None = None
    final: bool = False
    since: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored with the wave, returned by the API)."""
        d = asdict(self)
        d["outcome"] = self.outcome.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Verdict":
        """Back from the stored JSON form (a wave's previous verdicts)."""
        known = {f: d[f] for f in cls.__dataclass_fields__ if f in d}
        return cls(**{**known, "outcome": Outcome(d["outcome"])})


@dataclass
class WaveStats:
    """What the gates look at for one wave (the reconciler fills it from the database)."""

    size: int
    counts: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    now: float = 0.0
    new_p95_ms: float | None = None
    new_latency_samples: int = 0
    agreement: float | None = None
    agreement_samples: int = 0
    inferences: int = 0
    errors: int = 0
    nans: int = 0
    new_devices: list[DeviceTelemetry] = field(default_factory=list)  # per device of the wave, new version
    control_devices: list[DeviceTelemetry] = field(default_factory=list)  # per device of the control, old versions
    upgrades: int | None = None  # devices of the wave that ran another version of the bundle (None: not read)
    held_for_window: int = 0  # devices of the wave waiting for their maintenance window
    previous: dict[str, dict[str, Any]] = field(default_factory=dict)  # gate -> its last stored verdict for this wave
    extra: dict[str, Any] = field(default_factory=dict)  # values of inputs with no field of their own

    def count(self, statuses) -> int:
        """Devices of the wave in any of ``statuses``."""
        return sum(self.counts.get(AssignmentStatus(s).value, 0) for s in statuses)

    @property
    def reported(self) -> int:
        """Devices with a final status."""
        return self.count(FINAL_ASSIGNMENT)

    @property
    def failures(self) -> int:
        """Failed, rolled back or timed out."""
        return self.count(FAILED_ASSIGNMENT)

    @property
    def rollbacks(self) -> int:
        """Rolled back by the device itself."""
        return self.counts.get(AssignmentStatus.ROLLED_BACK.value, 0)


GateFn = Callable[[WaveStats, RolloutSettings], "Verdict | None"]
InputFn = Callable[[Any], dict[str, Any]]  # (edgeops.fleet.rollouts.inputs.WaveSource) -> values
_Input = TypeVar("_Input", bound=InputFn)


@dataclass(frozen=True)
class GateSpec:
    """What a registered gate reads and when it is configured."""

    reads: tuple[str, ...] = ()
    when: Callable[[RolloutSettings], bool] | None = None  # None: every rollout


GATES: dict[str, GateFn] = {}
GATE_SPECS: dict[str, GateSpec] = {}
INPUTS: dict[str, InputFn] = {}


def gate(name: str, reads: tuple[str, ...] = (), when: Callable[[RolloutSettings], bool] | None = None) -> Callable[[GateFn], GateFn]:
    """Register a gate evaluator under ``name`` (evaluated in registration order).

    ``reads``: the :func:`wave_input` providers it needs; ``when``: whether a rollout's settings
    configure it (its inputs are read only then).
    """

    def deco(fn: GateFn) -> GateFn:
        GATES[name] = fn
        GATE_SPECS[name] = GateSpec(tuple(reads), when)
        return fn

    return deco


def wave_input(name: str) -> Callable[[_Input], _Input]:
    """Register a provider of gate inputs under ``name`` (what a gate lists in ``reads``)."""

    def deco(fn: _Input) -> _Input:
        INPUTS[name] = fn
        return fn

    return deco


def inputs_needed(settings: RolloutSettings) -> list[str]:
    """Names of the inputs the gates configured for ``settings`` read, in registration order."""
    out: list[str] = []
    for name, spec in GATE_SPECS.items():
        if spec.when is None or spec.when(settings):
            for inp in spec.reads:
                if inp not in INPUTS:
                    raise KeyError(f"gate {name} reads input {inp!r}, which no @wave_input provides")
                if inp not in out:
                    out.append(inp)
    return out


def _rate(n: int, d: int) -> float:
    return n / d if d else 0.0


@gate("min_reporting")
def min_reporting(s: WaveStats, cfg: RolloutSettings) -> Verdict:
    """Enough devices of the wave reported a final status (never fails: timeouts make non-reporters failures)."""
    measured = _rate(s.reported, s.size) if s.size else 1.0
    ok = measured >= cfg.min_reporting
    return Verdict("min_reporting", Outcome.PASS if ok else Outcome.WAIT, measured, cfg.min_reporting, f"{s.reported}/{s.size} reported")


@gate("max_failure_rate")
def max_failure_rate(s: WaveStats, cfg: RolloutSettings) -> Verdict:
    """Failed + rolled back + timed out, over the wave's size, at most the threshold."""
    measured = _rate(s.failures, s.size)
    ok = measured <= cfg.max_failure_rate
    return Verdict("max_failure_rate", Outcome.PASS if ok else Outcome.FAIL, measured, cfg.max_failure_rate, f"{s.failures}/{s.size} failed")


@gate("max_rollback_rate")
def max_rollback_rate(s: WaveStats, cfg: RolloutSettings) -> Verdict | None:
    """Devices that rolled themselves back, over the wave's size, at most the threshold."""
    if cfg.max_rollback_rate is None:
        return None
    measured = _rate(s.rollbacks, s.size)
    ok = measured <= cfg.max_rollback_rate
    return Verdict("max_rollback_rate", Outcome.PASS if ok else Outcome.FAIL, measured, cfg.max_rollback_rate, f"{s.rollbacks}/{s.size} rolled back")


def _judged(name: str, s: WaveStats, cfg: RolloutSettings, decide: Callable[[float], tuple[list[judge.Judgement], str]]) -> Verdict:
    """A judged gate's verdict with its sequential looks (see the module doc).

    ``decide(alpha)`` judges the gate's metrics at that alpha, pooled and per stratum, and
    returns the judgements and a note. The gate fails if any judgement fails (a stratum's
    included: the detail names it), is inconclusive if a pooled one is, else passes. A look
    that is INCONCLUSIVE spends nothing (it cannot fail); between looks, and after the last, the
    last verdict stands.
    """
    if s.size == 0:
        # nothing on the new version in this wave (the last wave of a small selection, its
        # devices all in the control held back): nothing to judge; the control joins it next
        return Verdict(name, Outcome.PASS, None, None, "no device in this wave to judge (the earlier waves were judged against the control)", final=True)
    first = _first_install(name, s)
    if first:
        return first
    prev = s.previous.get(name)
    if prev is not None and prev.get("outcome") in (Outcome.PASS.value, Outcome.FAIL.value):
        if prev.get("final") or (prev.get("looked_at") is not None and s.now - prev["looked_at"] < cfg.judge_look_interval_s):
            return Verdict.from_dict(prev)
    looks = int(prev.get("looks", 0)) if prev else 0
    plan = judge.LookPlan(cfg.judge_alpha, cfg.judge_max_looks)
    wanted = math.ceil(cfg.min_reporting * s.size - 1e-9)
    if len(s.new_devices) < wanted:
        # a look on part of the wave would spend alpha on data that is still arriving (and the
        # last look could freeze a verdict before the slow devices report): wait, for free
        return Verdict(
            name, Outcome.INCONCLUSIVE, None, None,
            f"{len(s.new_devices)} of the wave's {s.size} devices reported telemetry on the new version; the judge looks once {wanted} have (min_reporting)",
            None, looks, prev.get("looked_at") if prev else None,
        )
    judgements, note = decide(plan.alpha_per_look)
    failed = [j for j in judgements if j.outcome == judge.FAIL]
    pooled_unsure = [j for j in judgements if j.outcome == judge.INCONCLUSIVE and "[" not in j.metric]
    detail = "; ".join(f"{j.metric}: {j.outcome}, {j.detail}" for j in (failed or judgements)) + (f"; {note}" if note else "")
    main = (failed or pooled_unsure or judgements)[0]
    jd = [j.to_dict() for j in judgements]
    if pooled_unsure and not failed:
        return Verdict(name, Outcome.INCONCLUSIVE, main.effect, main.bound, detail, jd, looks, prev.get("looked_at") if prev else None)
    looks += 1
    final = looks >= plan.max_looks
    detail += f"; look {looks} of {plan.max_looks}" + (" (final)" if final else "")
    return Verdict(name, Outcome.FAIL if failed else Outcome.PASS, main.effect, main.bound, detail, jd, looks, s.now, final)


def _first_install(name: str, s: WaveStats) -> Verdict | None:
    """PASS (final) when no device of the wave ran another version of the bundle: a first
    install has no old version to regress from, no shadow to agree with. Not silence: a fact
    of the assignments, stated in the detail."""
    if s.upgrades == 0 and s.size > 0:
        return Verdict(name, Outcome.PASS, None, None, f"first install on all {s.size} devices of the wave: no earlier version of the bundle to compare with", final=True)
    return None


Group = tuple[str, list[DeviceTelemetry], list[DeviceTelemetry]]


def _groups(s: WaveStats, cfg: RolloutSettings, has: Callable[[DeviceTelemetry], bool]) -> tuple[list[Group], str]:
    """What a judged gate compares: ``("", wave, control)`` pooled, then each stratum (profile, and
    the rollout's ``strata_tag``) with ``judge_min_devices`` on both sides when the devices fall in
    more than one, so a regression on one kind of device is not diluted by the others; and a
    note naming the strata too small to judge on their own (they still count in the pool)."""
    new = [d for d in s.new_devices if has(d)]
    ctl = [d for d in s.control_devices if has(d)]
    groups: list[Group] = [("", new, ctl)]
    small = []
    keys = sorted({d.stratum for d in new} | {d.stratum for d in ctl})
    if len(keys) > 1:
        for key in keys:
            n, c = [d for d in new if d.stratum == key], [d for d in ctl if d.stratum == key]
            if len(n) >= cfg.judge_min_devices and len(c) >= cfg.judge_min_devices:
                groups.append((key, n, c))
            else:
                small.append(f"{key} ({len(n)} new vs {len(c)} control)")
    return groups, ("strata too small to judge alone: " + ", ".join(small) if small else "")


def _label(metric: str, key: str) -> str:
    return f"{metric}[{key}]" if key else metric


def _positive(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None and v > 0]


@gate("max_error_rate", reads=("cohorts",), when=lambda cfg: cfg.max_error_rate is not None)
def max_error_rate(s: WaveStats, cfg: RolloutSettings) -> Verdict | None:
    """Error rate and NaN rate (per inference) of the wave against the control, pooled and per
    stratum: each fails when significantly higher (two-proportion z test) and higher by more
    than the setting. Alpha is split over the two rates and the groups judged (Bonferroni)."""
    if cfg.max_error_rate is None:
        return None
    bound = cfg.max_error_rate

    def decide(alpha: float) -> tuple[list[judge.Judgement], str]:
        groups, note = _groups(s, cfg, lambda d: d.inferences > 0)
        each = alpha / (2 * len(groups))
        out = []
        for key, new, ctl in groups:
            n_new, n_ctl = sum(d.inferences for d in new), sum(d.inferences for d in ctl)
            for metric, attr in (("error_rate", "errors"), ("nan_rate", "nans")):
                k_new, k_ctl = sum(getattr(d, attr) for d in new), sum(getattr(d, attr) for d in ctl)
                per = ([(getattr(d, attr), d.inferences) for d in new], [(getattr(d, attr), d.inferences) for d in ctl])
                out.append(judge.judge_rate(_label(metric, key), k_new, n_new, k_ctl, n_ctl, len(new), len(ctl), bound, each, cfg.judge_min_devices, per_device=per))
        return out, note

    return _judged("max_error_rate", s, cfg, decide)


def _latency_gate(name: str, metric: str, field: str, bound: float, s: WaveStats, cfg: RolloutSettings) -> Verdict | None:
    """One per-device latency figure (``field``: p95_ms or p50_ms) of the wave against the
    control, pooled and per stratum (Mann-Whitney, Hodges-Lehmann ratio): fails when
    significantly slower and the typical ratio is above ``bound``. Alpha is split over the
    groups judged (Bonferroni)."""

    def value(d) -> float | None:
        return getattr(d, field)

    def decide(alpha: float) -> tuple[list[judge.Judgement], str]:
        groups, note = _groups(s, cfg, lambda d: value(d) is not None and value(d) > 0)
        each = alpha / len(groups)
        return [
            judge.judge_continuous(_label(metric, key), _positive([value(d) for d in new]), _positive([value(d) for d in ctl]), bound - 1.0, each, cfg.judge_min_devices)
            for key, new, ctl in groups
        ], note

    return _judged(name, s, cfg, decide)


@gate("max_latency_regression", reads=("cohorts",), when=lambda cfg: cfg.max_latency_regression is not None)
def max_latency_regression(s: WaveStats, cfg: RolloutSettings) -> Verdict | None:
    """Per-device p95 latency of the wave against the control (the slow tail); see :func:`_latency_gate`."""
    if cfg.max_latency_regression is None:
        return None
    return _latency_gate("max_latency_regression", "latency_p95", "p95_ms", cfg.max_latency_regression, s, cfg)


@gate("max_latency_p50_regression", reads=("cohorts",), when=lambda cfg: cfg.max_latency_p50_regression is not None)
def max_latency_p50_regression(s: WaveStats, cfg: RolloutSettings) -> Verdict | None:
    """Per-device p50 latency of the wave against the control (the typical inference, where the
    p95 gate watches the slow tail); see :func:`_latency_gate`."""
    if cfg.max_latency_p50_regression is None:
        return None
    return _latency_gate("max_latency_p50_regression", "latency_p50", "p50_ms", cfg.max_latency_p50_regression, s, cfg)


@gate("min_agreement", reads=("cohorts",), when=lambda cfg: cfg.min_agreement is not None)
def min_agreement(s: WaveStats, cfg: RolloutSettings) -> Verdict | None:
    """Shadow agreement of the wave's devices with the model they replace against the threshold
    (one cohort: the old model is the reference), pooled and per stratum: the agreeing share of
    the inferences of the batches that report one, one-sample proportion test
    (:func:`~edgeops.fleet.rollouts.judge.judge_at_least`). Fails when significantly below the
    threshold; below it within the noise is inconclusive (more inferences decide); sequential
    looks as the other judged gates, alpha split over the groups judged."""
    if cfg.min_agreement is None:
        return None
    threshold = cfg.min_agreement

    def decide(alpha: float) -> tuple[list[judge.Judgement], str]:
        reporting = [d for d in s.new_devices if d.agreement is not None and d.agreement_weight > 0]
        groups: list[tuple[str, list[DeviceTelemetry]]] = [("", reporting)]
        keys = sorted({d.stratum for d in reporting})
        if len(keys) > 1:
            groups += [(k, m) for k in keys if len(m := [d for d in reporting if d.stratum == k]) >= cfg.judge_min_devices]
        each = alpha / len(groups)
        out = []
        for key, devices in groups:
            n = sum(d.agreement_weight for d in devices)
            k = sum((d.agreement or 0.0) * d.agreement_weight for d in devices)
            per = [(min((d.agreement or 0.0) * d.agreement_weight, d.agreement_weight), d.agreement_weight) for d in devices]
            out.append(judge.judge_at_least(_label("agreement", key), min(k, n), n, len(devices), threshold, each, cfg.judge_min_devices, per_device=per))
        return out, ""

    return _judged("min_agreement", s, cfg, decide)


@gate("bake")
def bake(s: WaveStats, cfg: RolloutSettings) -> Verdict:
    """The wave has run at least the bake time."""
    elapsed = max(0.0, s.now - s.started_at)
    return Verdict("bake", Outcome.PASS if elapsed >= cfg.bake_s else Outcome.WAIT, elapsed, cfg.bake_s, f"{elapsed:.0f}s of {cfg.bake_s:.0f}s")


def evaluate(stats: WaveStats, settings: RolloutSettings) -> tuple[Outcome, list[Verdict]]:
    """Run every registered gate; FAIL if any fails, PASS if all pass, INCONCLUSIVE if a gate
    has been inconclusive for ``inconclusive_timeout_s`` (the wave gives up), else WAIT.

    An inconclusive verdict carries ``since``: when the gate became inconclusive (from the
    wave's previous verdicts, so the limit survives a console restart).
    """
    verdicts = [v for fn in GATES.values() if (v := fn(stats, settings)) is not None]
    for v in verdicts:
        if v.outcome is Outcome.INCONCLUSIVE:
            prev = stats.previous.get(v.gate) or {}
            kept = prev.get("outcome") == Outcome.INCONCLUSIVE.value and prev.get("since") is not None
            # devices waiting for their maintenance window cannot report yet: the limit starts
            # once every device of the wave could have been updated
            v.since = prev["since"] if kept and not stats.held_for_window else stats.now
            v.detail += f" (inconclusive for {max(0.0, stats.now - v.since):.0f}s of {settings.inconclusive_timeout_s:.0f}s)"
    if any(v.outcome is Outcome.FAIL for v in verdicts):
        return Outcome.FAIL, verdicts
    if all(v.outcome is Outcome.PASS for v in verdicts):
        return Outcome.PASS, verdicts
    if any(v.outcome is Outcome.INCONCLUSIVE and v.since is not None and stats.now - v.since >= settings.inconclusive_timeout_s for v in verdicts):
        return Outcome.INCONCLUSIVE, verdicts
    return Outcome.WAIT, verdicts
