"""Model-quality gates from the classifier outputs' drift sketches: mean top-1 confidence and
output class mix of the wave on the new version against the control cohort.

Devices already send, with their telemetry, drift sketches of their tensors
(:mod:`edgeops.sketch`); a classifier output's sketch counts the top-1 class of every inference
and a histogram of the top-1 confidence (``CONFIDENCE_BINS`` bins on [0, 1]). Input
``output_sketches`` reads, per device, the sketches received since the wave began: the wave's
devices on the rollout's version and the devices outside the rollout on the bundle's other
published versions (the gates keep those the ``cohorts`` input chose as the control, so the
same devices are compared as for latency). Per device it keeps the first classifier output (by
tensor name) and sums its class counts and confidence histogram.

- ``max_confidence_drop``: per-device mean top-1 confidence (bin midpoints), Mann-Whitney one
  sided toward lower, fails when significant and the typical device's ratio new / control is
  below ``1 - max_confidence_drop`` (:func:`~edgeops.fleet.rollouts.judge.judge_continuous`);
- ``max_class_mix_shift``: the class counts summed per cohort, chi-square test of homogeneity
  with the Rao-Scott correction for devices that differ in what they see, fails when significant
  and the total variation distance is above the setting
  (:func:`~edgeops.fleet.rollouts.judge.judge_mix`).

Both are judged pooled and per stratum with the sequential looks of the other judged gates
(:mod:`edgeops.fleet.rollouts.gates`); a model without a classifier output (or a bundle built
without a sketch layout) gives them nothing to judge: INCONCLUSIVE, then the rollout pauses.

Registered on import (``edgeops.fleet.rollouts`` imports this module).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from edgeops.fleet.drift import MAX_SKETCH_ROWS
from edgeops.fleet.rollouts import judge
from edgeops.fleet.rollouts.gates import Verdict, WaveStats, _groups, _judged, _label, gate, wave_input
from edgeops.fleet.rollouts.inputs import COHORT_TTL_S
from edgeops.fleet.rollouts.settings import RolloutSettings
from edgeops.fleet.targets import published_versions

OUTPUT_TTL_S = 15.0  # a wave's per-device outputs are re-read at most this often


@dataclass
class DeviceOutputs:
    """One device's classifier output over the window: top-1 class counts and confidence histogram."""

    tensor: str
    classes: list[int] = field(default_factory=list)
    confidence: list[int] = field(default_factory=list)

    def add(self, state: dict[str, Any]) -> None:
        """Sum one batch's sketch state of the tensor (lengths differing: a layout change, skipped)."""
        classes, conf = state.get("class_counts") or [], state.get("confidence") or []
        if not self.classes:
            self.classes, self.confidence = [0] * len(classes), [0] * len(conf)
        if len(classes) != len(self.classes) or len(conf) != len(self.confidence):
            return
        self.classes = [a + int(b) for a, b in zip(self.classes, classes)]
        self.confidence = [a + int(b) for a, b in zip(self.confidence, conf)]

    @property
    def inferences(self) -> int:
        """Rows counted in the class mix."""
        return sum(self.classes)

    @property
    def mean_confidence(self) -> float | None:
        """Mean top-1 confidence from the histogram's bin midpoints (None without counts)."""
        total = sum(self.confidence)
        if not total:
            return None
        bins = len(self.confidence)
        return sum(c * (i + 0.5) / bins for i, c in enumerate(self.confidence)) / total

    def mix(self) -> dict[str, float]:
        """Class index (text) -> count."""
        return {str(i): float(c) for i, c in enumerate(self.classes) if c}


def fold_outputs(rows: Any) -> dict[str, DeviceOutputs]:
    """Per device, the first classifier output's counts summed over ``rows`` of (device_id, body)."""
    out: dict[str, DeviceOutputs] = {}
    for device_id, body in rows:
        try:
            states = json.loads(body)
        except ValueError:
            continue  # stored by ingest from a validated message: not expected; never a crash
        if not isinstance(states, dict):
            continue
        tensors = sorted(k for k, v in states.items() if isinstance(v, dict) and v.get("class_counts"))
        if not tensors:
            continue
        have = out.get(device_id)
        name = have.tensor if have else tensors[0]
        if name not in states:
            continue
        if have is None:
            have = out[device_id] = DeviceOutputs(name)
        have.add(states[name])
    return out


@wave_input("output_sketches")
def output_sketches(src: Any) -> dict[str, Any]:
    """``outputs_new`` and ``outputs_control``: device id -> :class:`DeviceOutputs` received since
    the wave began (less 1 s), cached ``OUTPUT_TTL_S``."""
    r = src.rollout
    db, conn = src.db, src.conn
    sk, a = db.t.sketches, db.t.assignments

    def old_versions() -> list[str]:
        return sorted(v for n, v in published_versions(src.targets()) if n == r.bundle_name and v != r.bundle_version)

    def compute() -> tuple[dict[str, DeviceOutputs], dict[str, DeviceOutputs]]:
        since = src.started - 1.0
        members = sa.select(a.c.device_id).where(a.c.rollout_id == r.id, a.c.wave_idx == src.wave.idx)
        new_q = sa.select(sk.c.device_id, sk.c.body).where(
            sk.c.device_id.in_(members), sk.c.version_name == r.bundle_name, sk.c.version_version == r.bundle_version, sk.c.received_at >= since
        )
        new = fold_outputs(conn.execute(new_q.order_by(sk.c.received_at.desc()).limit(MAX_SKETCH_ROWS)))
        old = src.cached("output_old_versions", COHORT_TTL_S, old_versions)
        control: dict[str, DeviceOutputs] = {}
        if old:
            in_rollout = sa.select(a.c.device_id).where(a.c.rollout_id == r.id)
            ctl_q = sa.select(sk.c.device_id, sk.c.body).where(
                sk.c.device_id.not_in(in_rollout), sk.c.version_name == r.bundle_name, sk.c.version_version.in_(old), sk.c.received_at >= since
            )
            control = fold_outputs(conn.execute(ctl_q.order_by(sk.c.received_at.desc()).limit(MAX_SKETCH_ROWS)))
        return new, control

    new, control = src.cached(f"outputs:{src.wave.idx}", OUTPUT_TTL_S, compute)
    return {"outputs_new": new, "outputs_control": control}


def _outputs(s: WaveStats) -> tuple[dict[str, DeviceOutputs], dict[str, DeviceOutputs]]:
    return s.extra.get("outputs_new") or {}, s.extra.get("outputs_control") or {}


@gate("max_confidence_drop", reads=("cohorts", "output_sketches"), when=lambda cfg: cfg.max_confidence_drop is not None)
def max_confidence_drop(s: WaveStats, cfg: RolloutSettings) -> Verdict | None:
    """Per-device mean top-1 confidence of the wave against the control (see the module doc)."""
    if cfg.max_confidence_drop is None:
        return None
    drop = cfg.max_confidence_drop
    new_out, ctl_out = _outputs(s)
    both = {**ctl_out, **new_out}  # a device is on one side only (in the wave or not in the rollout)

    def conf(device_id: str) -> float | None:
        o = both.get(device_id)
        return o.mean_confidence if o else None

    def decide(alpha: float) -> tuple[list[judge.Judgement], str]:
        groups, note = _groups(s, cfg, lambda d: (conf(d.device_id) or 0) > 0)
        each = alpha / len(groups)
        return [
            judge.judge_continuous(
                _label("top1_confidence", key), [conf(d.device_id) or 0 for d in new], [conf(d.device_id) or 0 for d in ctl], drop, each, cfg.judge_min_devices, higher_is_worse=False
            )
            for key, new, ctl in groups
        ], note

    return _judged("max_confidence_drop", s, cfg, decide)


@gate("max_class_mix_shift", reads=("cohorts", "output_sketches"), when=lambda cfg: cfg.max_class_mix_shift is not None)
def max_class_mix_shift(s: WaveStats, cfg: RolloutSettings) -> Verdict | None:
    """Output class mix of the wave against the control (see the module doc)."""
    if cfg.max_class_mix_shift is None:
        return None
    bound = cfg.max_class_mix_shift
    new_out, ctl_out = _outputs(s)
    both = {**ctl_out, **new_out}

    def pooled(devices: list[Any]) -> dict[str, float]:
        total: dict[str, float] = {}
        for d in devices:
            for k, c in both[d.device_id].mix().items():
                total[k] = total.get(k, 0.0) + c
        return total

    def decide(alpha: float) -> tuple[list[judge.Judgement], str]:
        groups, note = _groups(s, cfg, lambda d: d.device_id in both and both[d.device_id].inferences > 0)
        each = alpha / len(groups)
        return [
            judge.judge_mix(
                _label("class_mix", key), pooled(new), pooled(ctl), len(new), len(ctl), bound, each, cfg.judge_min_devices,
                per_device=([both[d.device_id].mix() for d in new], [both[d.device_id].mix() for d in ctl]),
            )
            for key, new, ctl in groups
        ], note

    return _judged("max_class_mix_shift", s, cfg, decide)
