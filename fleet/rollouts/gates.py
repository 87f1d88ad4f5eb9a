"""Gate evaluators: decide from a wave's numbers whether it passes, fails or must wait.

A gate is a function ``(WaveStats, RolloutSettings) -> Verdict | None`` registered by name
with :func:`gate`; None means "not configured for this rollout". A wave passes when every
configured gate says PASS, halts as soon as one says FAIL, and waits otherwise. Adding a gate
is one decorated function; its verdicts are stored with the wave and exported to /metrics.

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

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, TypeVar

from edgeops.fleet.rollouts.settings import RolloutSettings
from edgeops.fleet.rollouts.status import FAILED_ASSIGNMENT, FINAL_ASSIGNMENT, AssignmentStatus


class Outcome(str, Enum):
    """A gate's verdict."""

    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"


@dataclass
class Verdict:
    """One gate's verdict, with what was measured against which threshold."""

    gate: str
    outcome: Outcome
    measured: float | None = None
    threshold: float | None = None
    detail: str = ""

    def to_dict(self) -> dict:
        """JSON form (stored with the wave, returned by the API)."""
        d = asdict(self)
        d["outcome"] = self.outcome.value
        return d


@dataclass
class WaveStats:
    """What the gates look at for one wave (the reconciler fills it from the database)."""

    size: int
    counts: dict[str, int] = field(default_factory=dict)
    started_at: float = 0.0
    now: float = 0.0
    new_p95_ms: float | None = None
    new_latency_samples: int = 0
    baseline_p95_ms: float | None = None
    baseline_samples: int = 0
    agreement: float | None = None
    agreement_samples: int = 0
    inferences: int = 0
    errors: int = 0
    nans: int = 0
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


@gate("max_error_rate", reads=("new_version",), when=lambda cfg: cfg.max_error_rate is not None)
def max_error_rate(s: WaveStats, cfg: RolloutSettings) -> Verdict | None:
    """(Inference errors + NaN outputs) / inferences on the new version, at most the threshold."""
    if cfg.max_error_rate is None:
        return None
    if s.inferences == 0:
        return Verdict("max_error_rate", Outcome.PASS, None, cfg.max_error_rate, "no inferences reported on the new version yet")
    measured = (s.errors + s.nans) / s.inferences
    ok = measured <= cfg.max_error_rate
    return Verdict("max_error_rate", Outcome.PASS if ok else Outcome.FAIL, measured, cfg.max_error_rate, f"{s.errors} errors + {s.nans} NaN in {s.inferences} inferences")


@gate("max_latency_regression", reads=("new_version", "baseline"), when=lambda cfg: cfg.max_latency_regression is not None)
def max_latency_regression(s: WaveStats, cfg: RolloutSettings) -> Verdict | None:
    """p95 latency of the wave on the new version over the p95 of the cohort on the old version."""
    if cfg.max_latency_regression is None:
        return None
    if s.new_p95_ms is None or s.new_latency_samples == 0:
        return Verdict("max_latency_regression", Outcome.PASS, None, cfg.max_latency_regression, "no latency reported on the new version yet")
    if s.baseline_p95_ms is None or s.baseline_samples == 0 or s.baseline_p95_ms <= 0:
        return Verdict("max_latency_regression", Outcome.PASS, None, cfg.max_latency_regression, "no baseline: no device of the selection reported latency on another version")
    measured = s.new_p95_ms / s.baseline_p95_ms
    ok = measured <= cfg.max_latency_regression
    return Verdict(
        "max_latency_regression",
        Outcome.PASS if ok else Outcome.FAIL,
        measured,
        cfg.max_latency_regression,
        f"p95 {s.new_p95_ms:.2f} ms on the new version vs {s.baseline_p95_ms:.2f} ms on the old",
    )


@gate("min_agreement", reads=("new_version",), when=lambda cfg: cfg.min_agreement is not None)
def min_agreement(s: WaveStats, cfg: RolloutSettings) -> Verdict | None:
    """Shadow agreement of the new model with the one it replaces, at least the threshold."""
    if cfg.min_agreement is None:
        return None
    if s.agreement is None or s.agreement_samples == 0:
        return Verdict("min_agreement", Outcome.PASS, None, cfg.min_agreement, "no agreement reported yet")
    ok = s.agreement >= cfg.min_agreement
    return Verdict("min_agreement", Outcome.PASS if ok else Outcome.FAIL, s.agreement, cfg.min_agreement, f"{s.agreement_samples} batches")


@gate("bake")
def bake(s: WaveStats, cfg: RolloutSettings) -> Verdict:
    """The wave has run at least the bake time."""
    elapsed = max(0.0, s.now - s.started_at)
    return Verdict("bake", Outcome.PASS if elapsed >= cfg.bake_s else Outcome.WAIT, elapsed, cfg.bake_s, f"{elapsed:.0f}s of {cfg.bake_s:.0f}s")


def evaluate(stats: WaveStats, settings: RolloutSettings) -> tuple[Outcome, list[Verdict]]:
    """Run every registered gate; FAIL if any fails, PASS if all pass, else WAIT."""
    verdicts = [v for fn in GATES.values() if (v := fn(stats, settings)) is not None]
    if any(v.outcome is Outcome.FAIL for v in verdicts):
        return Outcome.FAIL, verdicts
    if all(v.outcome is Outcome.PASS for v in verdicts):
        return Outcome.PASS, verdicts
    return Outcome.WAIT, verdicts
