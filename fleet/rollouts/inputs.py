"""The gate inputs read from the database, registered with :func:`~edgeops.fleet.rollouts.gates.wave_input`.

- ``new_version``: the wave's telemetry on the rollout's version since the wave began
  (errors, NaN, p95, agreement);
- ``baseline``: the p95 of the rollout's cohort on the versions it replaces (kept for
  ``BASELINE_TTL_S`` per rollout).

Each provider gets a :class:`WaveSource` (the typed rollout and wave, an open connection, the
reconciler's time and per-rollout memo) and returns values for
:class:`~edgeops.fleet.rollouts.gates.WaveStats`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from edgeops.fleet.db import Database
from edgeops.fleet.rollouts import queries
from edgeops.fleet.rollouts.gates import wave_input
from edgeops.fleet.rollouts.records import LatencyBaseline, Rollout, Wave
from edgeops.fleet.targets import published_versions

BASELINE_WINDOW_S = 3600.0  # old-version telemetry this long before the rollout counts as baseline
BASELINE_TTL_S = 30.0  # a rollout's old-version baseline is recomputed at most this often


@dataclass
class WaveSource:
    """What an input provider may read for one wave's assessment."""

    db: Database
    conn: Connection
    rollout: Rollout
    wave: Wave
    started: float  # when the wave began (``now`` if it has no start time)
    now: float
    targets: Callable[[], dict[str, Any]]  # the repository's signed targets (edgeops.fleet.targets.list_targets)
    memo: dict[str, tuple[float, Any]] = field(default_factory=dict)  # per rollout, kept across ticks

    def cached(self, key: str, ttl_s: float, compute: Callable[[], Any]) -> Any:
        """``compute()``, reused for ``ttl_s`` seconds of the reconciler's clock."""
        hit = self.memo.get(key)
        if hit is not None and 0 <= self.now - hit[0] < ttl_s:
            return hit[1]
        value = compute()
        self.memo[key] = (self.now, value)
        return value


@wave_input("new_version")
def new_version(src: WaveSource) -> dict[str, Any]:
    """Errors, NaN, weighted p95 and agreement of the wave's devices on the new version."""
    tel = queries.new_version_telemetry(src.db, src.conn, src.rollout, src.wave.idx, src.started)
    return {
        "new_p95_ms": tel.p95_ms,
        "new_latency_samples": tel.p95_batches if tel.p95_weight else 0,
        "agreement": tel.agreement,
        "agreement_samples": tel.agreement_batches,
        "inferences": tel.inferences,
        "errors": tel.errors,
        "nans": tel.nans,
    }


@wave_input("baseline")
def baseline(src: WaveSource) -> dict[str, Any]:
    """p95 of the cohort on the old versions (cached ``BASELINE_TTL_S``).

    Only what belongs to the question counts: devices the rollout's selector matches, and
    versions of the bundle the repository publishes other than the new one, received by the
    console since ``BASELINE_WINDOW_S`` before the rollout was created. A device outside the
    selection, or a version string no one published, cannot move the baseline.
    """

    def compute() -> LatencyBaseline:
        r = src.rollout
        old = sorted(v for n, v in published_versions(src.targets()) if n == r.bundle_name and v != r.bundle_version)
        members = queries.cohort(src.db, src.conn, r.settings.selector) if old else set()
        return queries.latency_baseline(src.db, src.conn, r, old, members, r.created_at - BASELINE_WINDOW_S)

    base = src.cached("baseline", BASELINE_TTL_S, compute)
    return {"baseline_p95_ms": base.p95_ms, "baseline_samples": base.batches if base.weight else 0}
