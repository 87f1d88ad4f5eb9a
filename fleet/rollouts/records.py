"""Typed copies of what the reconciler reads: a rollout, a wave, a wave's telemetry.

The reconciler works on these (Argo Rollouts' "reconcile a typed copy, assess, write status
once"), never on database rows: :mod:`edgeops.fleet.rollouts.queries` builds them, the gates
read :class:`~edgeops.fleet.rollouts.gates.WaveStats` filled from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

from edgeops.fleet.rollouts.resolution import RolloutTargets
from edgeops.fleet.rollouts.settings import RolloutSettings
from edgeops.fleet.rollouts.status import RolloutStatus, WaveStatus


if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Record = TypeVar("_Record", bound="DataclassInstance")


def _from_row(cls: type[_Record], m: Any, **parsed: Any) -> _Record:
    """A record from a row mapping: every field by its column name, ``parsed`` ones as given."""
    return cls(**{f.name: m[f.name] for f in fields(cls) if f.name not in parsed}, **parsed)


@dataclass(frozen=True)
class Rollout:
    """One rollout as stored (``rollouts`` row), settings parsed."""

    id: str
    bundle_name: str
    bundle_version: str
    release: int
    target_name: str
    target_sha256: str
    target_length: int
    settings: RolloutSettings
    status: RolloutStatus
    status_reason: str
    current_wave: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    targets: RolloutTargets  # the version's target per profile (one for any profile: a rollout stored before them)

    @classmethod
    def from_row(cls, m: Any) -> "Rollout":
        """From a ``rollouts`` row mapping."""
        bundle = f"{m['bundle_name']}@{m['bundle_version']}"
        return _from_row(
            cls,
            m,
            targets=RolloutTargets.from_json(m["targets"]) if m.get("targets") else RolloutTargets.single(bundle, m["target_name"], m["target_sha256"], m["target_length"], m["release"] or 0),
            release=m["release"] or 0,
            settings=RolloutSettings.model_validate_json(m["settings"]),
            status=RolloutStatus(m["status"]),
            status_reason=m["status_reason"] or "",
        )

    @property
    def last_wave(self) -> int:
        """Index of the rollout's last wave."""
        return len(self.settings.waves) - 1


@dataclass(frozen=True)
class Wave:
    """One wave of a rollout as stored (``waves`` row), gate verdicts parsed."""

    rollout_id: str
    idx: int
    percent: float
    status: WaveStatus
    started_at: float | None
    finished_at: float | None
    reason: str
    gates: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_row(cls, m: Any) -> "Wave":
        """From a ``waves`` row mapping."""
        return _from_row(cls, m, status=WaveStatus(m["status"]), reason=m["reason"] or "", gates=json.loads(m["gates"] or "[]"))


@dataclass(frozen=True)
class WaveTelemetry:
    """Telemetry of a wave's devices on the rollout's version since the wave began (sums in SQL)."""

    inferences: int = 0
    errors: int = 0
    nans: int = 0
    p95_weighted: float = 0.0  # SUM(p95 x inferences) over batches that report a p95
    p95_weight: float = 0.0  # SUM(inferences) over those batches
    p95_batches: int = 0
    agreement: float | None = None  # mean over batches that report one
    agreement_batches: int = 0

    @property
    def p95_ms(self) -> float | None:
        """Inference-weighted mean p95, None without a weighted batch."""
        return self.p95_weighted / self.p95_weight if self.p95_weight else None


@dataclass(frozen=True)
class DeviceTelemetry:
    """One device's telemetry on one side of a comparison (new version or control), summed in SQL."""

    device_id: str
    profile: str | None
    inferences: float = 0.0
    errors: float = 0.0
    nans: float = 0.0
    p95_weighted: float = 0.0  # SUM(p95 x inferences) over batches that report a p95
    p95_weight: float = 0.0
    agreement_sum: float = 0.0
    agreement_batches: int = 0
    stratum: str = ""  # profile (and the rollout's strata tag): the judge compares like with like
    p50_weighted: float = 0.0  # SUM(p50 x inferences) over batches that report a p50
    p50_weight: float = 0.0
    agreement_weight: float = 0.0  # inferences of the batches that report an agreement

    @property
    def p95_ms(self) -> float | None:
        """Inference-weighted mean of the device's batch p95s, None without a weighted batch."""
        return self.p95_weighted / self.p95_weight if self.p95_weight else None

    @property
    def p50_ms(self) -> float | None:
        """Inference-weighted mean of the device's batch p50s, None without a weighted batch."""
        return self.p50_weighted / self.p50_weight if self.p50_weight else None

    @property
    def agreement(self) -> float | None:
        """Mean shadow agreement over the batches that report one."""
        return self.agreement_sum / self.agreement_batches if self.agreement_batches else None
