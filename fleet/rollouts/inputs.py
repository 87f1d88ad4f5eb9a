"""The gate inputs read from the database, registered with :func:`~edgeops.fleet.rollouts.gates.wave_input`.

- ``new_version``: the wave's telemetry on the rollout's version since the wave began
  (errors, NaN, p95, agreement), summed over the wave;
- ``cohorts``: the same per device, for the wave (``new_devices``) and for the control cohort
  (``control_devices``): devices the selector matches that are not in the rollout (nor
  excluded from it: :mod:`~edgeops.fleet.rollouts.resolution`), on the
  other published versions of the bundle, over the same window (since the wave began). The
  judged gates compare the two. Which devices are selected and which versions are published is
  kept for ``COHORT_TTL_S`` per rollout; ``upgrades``: how many of the wave's devices ran
  another version of the bundle before (0: a first install, nothing to compare with).

Each provider gets a :class:`WaveSource` (the typed rollout and wave, an open connection, the
reconciler's time and per-rollout memo) and returns values for
:class:`~edgeops.fleet.rollouts.gates.WaveStats`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from edgeops.fleet.db import Database
from edgeops.fleet.rollouts import queries
from edgeops.fleet.rollouts.gates import wave_input
from edgeops.fleet.rollouts.records import Rollout, Wave
from edgeops.fleet.targets import published_versions

COHORT_TTL_S = 30.0  # the selection and the published old versions are re-read at most this often


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
    repo_dir: Path | None = None  # the repository folder: bundles and their drift references

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


@wave_input("cohorts")
def cohorts(src: WaveSource) -> dict[str, Any]:
    """Per-device telemetry of the wave on the new version and of the control on the old ones,
    both received since the wave began (the console's clock).

    Only what belongs to the question counts: control devices are ones the rollout's selector
    matches and that are not in the rollout, on versions of the bundle the repository publishes
    other than the new one. A device outside the selection, or a version string no one
    published, cannot move the control.
    """
    r = src.rollout

    def selection() -> tuple[list[str], set[str]]:
        old = sorted(v for n, v in published_versions(src.targets()) if n == r.bundle_name and v != r.bundle_version)
        # only devices the rollout can deliver to: an excluded profile has no wave to compare
        return old, (queries.cohort(src.db, src.conn, r.settings.selector, lambda p: r.targets.resolve(p) is not None) if old else set())

    old, members = src.cached("selection", COHORT_TTL_S, selection)
    return {
        "upgrades": queries.wave_upgrades(src.db, src.conn, r, src.wave.idx),
        "new_devices": queries.wave_device_telemetry(src.db, src.conn, r, src.wave.idx, src.started),
        "control_devices": queries.control_device_telemetry(src.db, src.conn, r, old, members, src.started),
    }
