"""Probation: watch a freshly activated version on real traffic and decide commit or rollback.

Every inference the agent serves during probation is recorded here: its latency, whether it
failed, whether its outputs hold NaN/Inf, and, for a sampled share of inputs, the previous
version's outputs and latency on the same input (run in shadow). Gates:

- ``nan_outputs``:        outputs holding NaN/Inf, at most ``max_nan`` (fails at once when exceeded)
                          (inputs holding NaN/Inf are refused before the model runs, see
                          edgeops.agent.inputs, so every NaN counted here is the model's)
- ``error_rate``:         failed inferences / inferences <= ``max_error_rate`` (fails as soon as the
                          errors alone exceed the rate for the whole window)
- ``latency_p95``:        p95 latency <= manifest budget x ``latency_factor``
- ``latency_vs_previous``: p95 <= the previous version's shadow p95 x ``previous_latency_factor``
- ``agreement``:          share of shadowed inputs on which both versions agree >= ``min_agreement``
                          (classifiers: same top-1 class on every row; other tasks: cosine
                          similarity of the outputs >= 0.98)

The window closes when it has seen ``window_count`` inferences *and* ``window_seconds`` have
passed; then every gate is evaluated. Gates that need a previous version or enough shadow
samples are skipped (reported as passed with a detail) when there is none.

Traffic choice: when live traffic is short of the window, the agent feeds the bundle's golden
inputs through the same serving path at ``synthetic_interval_s`` (see Agent), so an idle
device still finishes probation; live inputs count the same way and are the only ones that
can reveal input-dependent failures.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from edgeops.protocol import GateResult

from edgeops.agent.config import ProbationConfig
from edgeops.agent.system import percentile

COSINE_AGREEMENT = 0.98


def outputs_have_nan(outputs: dict[str, np.ndarray]) -> bool:
    """True when any floating output holds NaN or Inf."""
    for v in outputs.values():
        a = np.asarray(v)
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            return True
    return False


def outputs_agree(new: dict[str, np.ndarray], old: dict[str, np.ndarray], task: str) -> bool:
    """Whether two versions' outputs agree: same top-1 class (classifiers) or cosine >= 0.98."""
    for name, a in new.items():
        b = old.get(name)
        if b is None:
            return False
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            return False
        if task == "classifier" and a.ndim >= 1 and a.shape[-1] > 1:
            if not np.array_equal(np.argmax(a, axis=-1), np.argmax(b, axis=-1)):
                return False
        else:
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            if na == 0 or nb == 0:
                if not np.allclose(a, b):
                    return False
            elif float(np.dot(a.ravel(), b.ravel()) / (na * nb)) < COSINE_AGREEMENT:
                return False
    return True


@dataclass
class ProbationVerdict:
    """The window's outcome."""

    passed: bool
    gates: list[GateResult]

    @property
    def failed_gates(self) -> list[GateResult]:
        """Gates that failed."""
        return [g for g in self.gates if not g.passed]


@dataclass
class _Window:
    count: int = 0
    errors: int = 0
    nan: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    shadow_latencies_ms: list[float] = field(default_factory=list)
    shadow_total: int = 0
    shadow_agree: int = 0
    shadow_errors: int = 0


class ProbationMonitor:
    """Collects observations of one probation window (thread-safe) and evaluates its gates."""

    def __init__(self, settings: ProbationConfig, budget_p95_ms: float, task: str, started_at: float, has_previous: bool):
        self.settings = settings
        self.budget_p95_ms = budget_p95_ms
        self.task = task
        self.started_at = started_at
        self.has_previous = has_previous
        self._w = _Window()
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        """Inferences observed so far."""
        return self._w.count

    def record(self, latency_ms: float | None, outputs: dict[str, np.ndarray] | None) -> None:
        """One inference of the new version; ``outputs`` None means it failed."""
        with self._lock:
            self._w.count += 1
            if outputs is None:
                self._w.errors += 1
                return
            if latency_ms is not None:
                self._w.latencies_ms.append(latency_ms)
            if outputs_have_nan(outputs):
                self._w.nan += 1

    def record_shadow(self, new_outputs: dict[str, np.ndarray], old_outputs: dict[str, np.ndarray] | None, old_latency_ms: float | None) -> None:
        """The previous version's result on the same input (None when it failed there)."""
        with self._lock:
            if old_outputs is None:
                self._w.shadow_errors += 1
                return
            self._w.shadow_total += 1
            if old_latency_ms is not None:
                self._w.shadow_latencies_ms.append(old_latency_ms)
            if outputs_agree(new_outputs, old_outputs, self.task):
                self._w.shadow_agree += 1

    def agreement(self) -> float | None:
        """Share of shadowed inputs that agreed so far (None without samples)."""
        w = self._w
        return None if w.shadow_total == 0 else w.shadow_agree / w.shadow_total

    def evaluate(self, now: float, force: bool = False) -> ProbationVerdict | None:
        """The verdict when the window is decided (early failure or closed), else None."""
        s = self.settings
        with self._lock:
            w = self._w
            if w.nan > s.max_nan:
                return ProbationVerdict(False, [GateResult(gate="nan_outputs", passed=False, measured=float(w.nan), threshold=float(s.max_nan), detail=f"{w.nan} of {w.count} inferences gave NaN/Inf")])
            allowed_errors = s.max_error_rate * max(s.window_count, w.count)
            if w.errors > allowed_errors:
                rate = w.errors / max(w.count, 1)
                return ProbationVerdict(False, [GateResult(gate="error_rate", passed=False, measured=round(rate, 4), threshold=s.max_error_rate, detail=f"{w.errors} of {w.count} inferences failed")])
            closed = w.count >= s.window_count and (now - self.started_at) >= s.window_seconds
            if not closed and not force:
                return None
            return self._close(now)

    def _close(self, now: float) -> ProbationVerdict:
        s, w = self.settings, self._w
        gates: list[GateResult] = []
        rate = w.errors / w.count if w.count else 0.0
        gates.append(GateResult(gate="error_rate", passed=rate <= s.max_error_rate, measured=round(rate, 4), threshold=s.max_error_rate, detail=f"{w.errors} of {w.count}"))
        gates.append(GateResult(gate="nan_outputs", passed=w.nan <= s.max_nan, measured=float(w.nan), threshold=float(s.max_nan)))
        p95 = percentile(w.latencies_ms, 95)
        limit = self.budget_p95_ms * s.latency_factor
        if p95 is None:
            gates.append(GateResult(gate="latency_p95", passed=True, detail="no successful inference to time"))
        else:
            gates.append(GateResult(gate="latency_p95", passed=p95 <= limit, measured=round(p95, 3), threshold=round(limit, 3)))
        prev_p95 = percentile(w.shadow_latencies_ms, 95)
        if p95 is None or prev_p95 is None or len(w.shadow_latencies_ms) < s.min_shadow_samples:
            gates.append(GateResult(gate="latency_vs_previous", passed=True, detail="skipped: not enough shadow samples" if self.has_previous else "skipped: no previous version"))
        else:
            # Sub-millisecond models jitter by multiples; compare against at least 1 ms.
            threshold = max(prev_p95, 1.0) * s.previous_latency_factor
            gates.append(GateResult(gate="latency_vs_previous", passed=p95 <= threshold, measured=round(p95, 3), threshold=round(threshold, 3), detail=f"previous p95 {prev_p95:.3f} ms"))
        agreement = self.agreement()
        if agreement is None or w.shadow_total < s.min_shadow_samples:
            gates.append(GateResult(gate="agreement", passed=True, detail="skipped: not enough shadow samples" if self.has_previous else "skipped: no previous version"))
        else:
            gates.append(GateResult(gate="agreement", passed=agreement >= s.min_agreement, measured=round(agreement, 4), threshold=s.min_agreement, detail=f"{w.shadow_agree} of {w.shadow_total} shadowed inputs"))
        return ProbationVerdict(all(g.passed for g in gates), gates)
