"""Per-interval inference metrics: counts, a latency histogram, errors, NaN, output statistics,
and drift sketches of the served inputs and outputs (:mod:`edgeops.sketch`, in the layouts of
the served bundle's manifest).

The collector is fed by every inference the agent serves and is drained once per telemetry
interval into a :class:`edgeops.protocol.TelemetryBatch` (the agent adds host readings, the
active version, the state and the spool's drop count, then spools it).
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass, field

import numpy as np

from edgeops.protocol import OutputStats
from edgeops.sketch import Reference, Sketcher, SketchState

from edgeops.agent.system import percentile

LATENCY_BUCKETS_MS = [0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
MAX_KEPT_LATENCIES = 10_000  # for p50/p95 within one interval; beyond that the histogram still counts


@dataclass
class _OutputAcc:
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    lo: float = float("inf")
    hi: float = float("-inf")
    nan: int = 0

    def add(self, a: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.float64).ravel()
        finite = np.isfinite(a)
        self.nan += int(a.size - finite.sum())
        a = a[finite]
        if a.size:
            self.n += int(a.size)
            self.total += float(a.sum())
            self.total_sq += float((a * a).sum())
            self.lo = min(self.lo, float(a.min()))
            self.hi = max(self.hi, float(a.max()))

    def stats(self) -> OutputStats:
        if self.n == 0:
            return OutputStats(mean=0.0, std=0.0, min=0.0, max=0.0, nan_count=self.nan)
        mean = self.total / self.n
        var = max(0.0, self.total_sq / self.n - mean * mean)
        return OutputStats(mean=mean, std=var**0.5, min=self.lo, max=self.hi, nan_count=self.nan)


@dataclass
class IntervalMetrics:
    """What one interval saw."""

    ts_start: float
    ts_end: float
    inference_count: int = 0
    error_count: int = 0
    nan_count: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    sketches: dict[str, SketchState] = field(default_factory=dict)


class TelemetryCollector:
    """Thread-safe accumulator of one interval's inference metrics."""

    def __init__(self, now: float):
        self._lock = threading.Lock()
        self._reference: Reference | None = None  # the served bundle's drift reference
        self._sketchers: dict[str, Sketcher] = {}  # kept across intervals, emptied at each drain
        self.sketch_errors = 0  # tensors that could not be folded (shape not the reference's), since start
        self._reset(now)

    def _reset(self, now: float) -> None:
        self._start = now
        self._count = 0
        self._errors = 0
        self._nan = 0
        self._hist = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        self._latencies: list[float] = []
        self._outputs: dict[str, _OutputAcc] = {}

    def pending(self) -> int:
        """Inferences recorded in the current interval so far."""
        with self._lock:
            return self._count

    def record(
        self,
        latency_ms: float | None,
        outputs: dict[str, np.ndarray] | None,
        inputs: dict[str, np.ndarray] | None = None,
        reference: Reference | None = None,
    ) -> None:
        """One inference; ``outputs`` None means it failed. With ``inputs`` and the served bundle's
        drift ``reference``, the inputs and outputs are folded into the interval's sketches."""
        with self._lock:
            self._count += 1
            if outputs is None:
                self._errors += 1
                return
            if latency_ms is not None:
                self._hist[bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)] += 1
                if len(self._latencies) < MAX_KEPT_LATENCIES:
                    self._latencies.append(latency_ms)
            had_nan = False
            for name, value in outputs.items():
                acc = self._outputs.setdefault(name, _OutputAcc())
                before = acc.nan
                acc.add(value)
                had_nan = had_nan or acc.nan > before
            if had_nan:
                self._nan += 1
            if inputs is not None and reference is not None:
                self._sketch(reference, inputs, outputs)

    def _sketch(self, reference: Reference, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        if reference is not self._reference:  # another bundle serves: its layouts, from empty
            self._reference = reference
            self._sketchers = {name: Sketcher(layout) for name, layout in reference.layouts.items()}
        for name, sketcher in self._sketchers.items():
            value = inputs.get(name)
            if value is None:
                value = outputs.get(name)
            if value is None:
                continue
            try:
                sketcher.add(value)
            except Exception:  # noqa: BLE001 (monitoring must never fail an inference)
                # a shape the reference cannot fold (another channel count): that tensor is not sketched
                self.sketch_errors += 1

    def sketch_states(self) -> tuple[Reference | None, dict[str, SketchState]]:
        """The reference the interval sketches against and its sketches so far (not reset)."""
        with self._lock:
            return self._reference, {k: v.state() for k, v in self._sketchers.items() if v.rows}

    def drain(self, now: float) -> IntervalMetrics:
        """The interval's metrics; starts a new interval at ``now``."""
        with self._lock:
            m = IntervalMetrics(
                ts_start=self._start,
                ts_end=now,
                inference_count=self._count,
                error_count=self._errors,
                nan_count=self._nan,
                latency_counts=list(self._hist),
                latency_p50_ms=percentile(self._latencies, 50),
                latency_p95_ms=percentile(self._latencies, 95),
                outputs={k: v.stats() for k, v in self._outputs.items()},
                sketches={k: v.state() for k, v in self._sketchers.items() if v.rows},
            )
            for sketcher in self._sketchers.values():
                sketcher.reset()
            self._reset(now)
            return m
