"""The ``max_drift`` rollout gate: the wave's devices on the new version must not have drifted
from the bundle's reference (:mod:`edgeops.fleet.drift`, :mod:`edgeops.sketch`).

Input ``new_version_drift``: the drift sketches the wave's devices sent on the rollout's version
since the wave began, merged, scored against the reference in the bundle's manifest. The gate
fails when the PSI is above ``max_drift`` *and* the KS p-value is below ``drift_alpha``; it is
INCONCLUSIVE (never a pass; the rollout pauses after ``inconclusive_timeout_s``, see
:mod:`edgeops.fleet.rollouts.gates`) while fewer than ``drift_min_samples`` inferences were
sketched, or when the bundle has no reference (built without validation or calibration data:
there is nothing to compare with, and the detail says so).

Registered on import (``edgeops.fleet.rollouts`` imports this module).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from edgeops.fleet.drift import merged_states, reference_store
from edgeops.fleet.rollouts.gates import Outcome, Verdict, WaveStats, gate, wave_input
from edgeops.fleet.rollouts.settings import RolloutSettings
from edgeops.sketch import Drift, score

DRIFT_TTL_S = 15.0  # a wave's drift score is recomputed at most this often (it merges every batch of the wave)


@wave_input("new_version_drift")
def new_version_drift(src: Any) -> dict[str, Any]:
    """``drift``: the wave's merged sketches on the new version scored against the bundle's
    reference (None: no reference), cached ``DRIFT_TTL_S``."""
    r = src.rollout

    def compute() -> Drift | None:
        repo = src.repo_dir
        reference = reference_store(repo).get(r.bundle_name, r.bundle_version) if repo is not None else None
        if reference is None:
            return None
        a = src.db.t.assignments
        devices = [d for (d,) in src.conn.execute(sa.select(a.c.device_id).where(a.c.rollout_id == r.id, a.c.wave_idx == src.wave.idx))]
        # the console's receive clock, as the other telemetry inputs (less 1 s for a batch received with the wave's start)
        states, _ = merged_states(src.db, src.conn, sorted(devices), r.bundle_name, r.bundle_version, src.started - 1.0)
        return score(reference, states)

    return {"drift": src.cached(f"drift:{src.wave.idx}", DRIFT_TTL_S, compute)}


@gate("max_drift", reads=("new_version_drift",), when=lambda cfg: getattr(cfg, "max_drift", None) is not None)
def max_drift(s: WaveStats, cfg: RolloutSettings) -> Verdict | None:
    """PSI of the wave's data on the new version against the bundle's reference at most the
    threshold (a larger PSI fails only when the KS test finds it significant)."""
    threshold = getattr(cfg, "max_drift", None)
    if threshold is None:
        return None
    d: Drift | None = s.extra.get("drift")
    if d is None:
        return Verdict("max_drift", Outcome.INCONCLUSIVE, None, threshold, "the bundle has no drift reference (built without --validation or --calibration data); nothing to compare with")
    if d.samples < cfg.drift_min_samples:
        return Verdict("max_drift", Outcome.INCONCLUSIVE, d.psi if d.samples else None, threshold, f"{d.samples} of {cfg.drift_min_samples} inferences sketched on the new version")
    significant = d.p_value < cfg.drift_alpha
    failed = d.psi > threshold and significant
    worst = max(d.tensors.values(), key=lambda t: t.psi).name if d.tensors else "-"
    detail = f"PSI {d.psi:.3f} (worst tensor {worst}), KS {d.ks:.3f}, p {d.p_value:.2g} on {d.samples} inferences vs {d.reference_samples} in the reference"
    return Verdict("max_drift", Outcome.FAIL if failed else Outcome.PASS, d.psi, threshold, detail)
