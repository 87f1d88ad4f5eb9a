"""The rollout path's reads: SQL in, typed records out (:mod:`edgeops.fleet.rollouts.records`).

The reconciler and the rollout service decide; this module only asks the database. Telemetry
questions are bounded to what belongs to them (issue 13): a wave's own devices on the rollout's
version by the console's receive clock; the control from the selected devices outside the
rollout on published versions over the same window, summed per device in double precision.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgeops.errors import FleetError
from edgeops.fleet.db import Database, float_sum, health_sums, weighted_p50_sums
from edgeops.fleet.rollouts.records import DeviceTelemetry, Rollout, Wave, WaveTelemetry
from edgeops.fleet.rollouts.settings import Selector
from edgeops.fleet.rollouts.status import IN_FLIGHT_ASSIGNMENT, LIVE_ROLLOUT, AssignmentStatus as A


class UnknownRolloutError(FleetError):
    """No rollout with that id."""


def literal_statuses(statuses: Iterable[str]) -> list[sa.ColumnClause[Any]]:
    """Assignment statuses as SQL literals (not bind parameters: the statement works with executemany)."""
    return [sa.literal_column(f"'{A(s).value}'") for s in statuses]


def live_rollouts(db: Database, conn: Connection) -> list[Rollout]:
    """Every rollout the reconciler drives (running, paused, waiting for approval, aborting), oldest first."""
    t = db.t.rollouts
    rows = conn.execute(sa.select(t).where(t.c.status.in_([s.value for s in LIVE_ROLLOUT])).order_by(t.c.created_at))
    return [Rollout.from_row(r._mapping) for r in rows]


def load_rollout(db: Database, conn: Connection, rollout_id: str) -> Rollout:
    """One rollout; UnknownRolloutError when absent."""
    row = conn.execute(sa.select(db.t.rollouts).where(db.t.rollouts.c.id == rollout_id)).first()
    if row is None:
        raise UnknownRolloutError(f"rollout {rollout_id}: no such rollout (see `edgeops rollout list`)")
    return Rollout.from_row(row._mapping)


def load_wave(db: Database, conn: Connection, rollout_id: str, idx: int) -> Wave | None:
    """Wave ``idx`` of a rollout (None for ``idx < 0``: no wave started yet)."""
    if idx < 0:
        return None
    w = db.t.waves
    row = conn.execute(sa.select(w).where(w.c.rollout_id == rollout_id, w.c.idx == idx)).first()
    return Wave.from_row(row._mapping) if row else None


def load_waves(db: Database, conn: Connection, rollout_id: str) -> list[Wave]:
    """Every wave of a rollout, in order."""
    w = db.t.waves
    return [Wave.from_row(r._mapping) for r in conn.execute(sa.select(w).where(w.c.rollout_id == rollout_id).order_by(w.c.idx))]


def wave_counts(db: Database, conn: Connection, rollout_id: str, idx: int) -> dict[str, int]:
    """Devices of one wave per assignment status."""
    a = db.t.assignments
    return {s: n for s, n in conn.execute(sa.select(a.c.status, sa.func.count()).where(a.c.rollout_id == rollout_id, a.c.wave_idx == idx).group_by(a.c.status))}


def rollout_counts(db: Database, conn: Connection, rollout_id: str) -> dict[str, int]:
    """Devices of a rollout (every wave) per assignment status."""
    a = db.t.assignments
    return {s: n for s, n in conn.execute(sa.select(a.c.status, sa.func.count()).where(a.c.rollout_id == rollout_id).group_by(a.c.status))}


def new_version_telemetry(db: Database, conn: Connection, rollout: Rollout, idx: int, since: float) -> WaveTelemetry:
    """Telemetry of wave ``idx``'s devices on the rollout's version, received since ``since`` (less 1 s)."""
    a, tel = db.t.assignments, db.t.telemetry
    members = sa.select(a.c.device_id).where(a.c.rollout_id == rollout.id, a.c.wave_idx == idx).scalar_subquery()
    # an aggregate without GROUP BY: always exactly one row
    inferences, errors, nans, p95w, p95n, p95c, agree, agree_n = tuple(conn.execute(
        sa.select(
            *health_sums(tel),
            sa.func.count(tel.c.p95_ms),
            sa.func.avg(tel.c.agreement),
            sa.func.count(tel.c.agreement),
        ).where(
            tel.c.device_id.in_(members),
            tel.c.version_name == rollout.bundle_name,
            tel.c.version_version == rollout.bundle_version,
            # the console's receive clock, never the device's own ts_end (issue 13)
            tel.c.received_at >= since - 1.0,
        )
    ).one())
    return WaveTelemetry(
        inferences=int(inferences or 0),
        errors=int(errors or 0),
        nans=int(nans or 0),
        p95_weighted=float(p95w or 0.0),
        p95_weight=float(p95n or 0.0),
        p95_batches=int(p95c or 0),
        agreement=float(agree) if agree is not None else None,
        agreement_batches=int(agree_n or 0),
    )


def stratum(profile: str | None, tags: dict[str, Any], strata_tag: str | None) -> str:
    """A device's stratum label: ``profile=P``, plus ``,TAG=V`` when the rollout strata by a tag."""
    label = f"profile={profile or '-'}"
    if strata_tag:
        label += f",{strata_tag}={tags.get(strata_tag, '-')}"
    return label


def _per_device(db: Database, conn: Connection, where: list[Any], strata_tag: str | None) -> list[DeviceTelemetry]:
    """Telemetry summed per device (with the device's stratum) over the rows ``where`` selects."""
    tel, d = db.t.telemetry, db.t.devices
    q = (
        sa.select(
            tel.c.device_id,
            d.c.profile,
            d.c.tags,
            *health_sums(tel),
            sa.func.sum(tel.c.agreement),
            sa.func.count(tel.c.agreement),
            *weighted_p50_sums(tel),
            # inferences of the batches that report an agreement: the trials of the agreement test
            float_sum(sa.case((tel.c.agreement.is_not(None), tel.c.inference_count), else_=0)),
        )
        .select_from(tel.join(d, d.c.id == tel.c.device_id))
        .where(*where)
        .group_by(tel.c.device_id, d.c.profile, d.c.tags)
    )
    tags = _Tags()
    return [
        DeviceTelemetry(
            dev, profile, float(inf or 0), float(err or 0), float(nan or 0), float(pw or 0), float(pn or 0), float(ag or 0), int(agn or 0),
            stratum(profile, tags(text), strata_tag), p50_weighted=float(p5w or 0), p50_weight=float(p5n or 0), agreement_weight=float(agw or 0),
        )
        for dev, profile, text, inf, err, nan, pw, pn, ag, agn, p5w, p5n, agw in conn.execute(q)
    ]


def wave_device_telemetry(db: Database, conn: Connection, rollout: Rollout, idx: int, since: float) -> list[DeviceTelemetry]:
    """Per device of wave ``idx``: its telemetry on the rollout's version received since ``since`` (less 1 s)."""
    a, tel = db.t.assignments, db.t.telemetry
    members = sa.select(a.c.device_id).where(a.c.rollout_id == rollout.id, a.c.wave_idx == idx)
    return _per_device(
        db,
        conn,
        [tel.c.device_id.in_(members), tel.c.version_name == rollout.bundle_name, tel.c.version_version == rollout.bundle_version, tel.c.received_at >= since - 1.0],
        rollout.settings.strata_tag,
    )


def late_failures_handled(db: Database, conn: Connection, rollout_id: str, marker: str) -> dict[str, int]:
    """Devices of a rollout per status whose late failure the watch already handled (detail ``marker``...)."""
    a = db.t.assignments
    q = sa.select(a.c.status, sa.func.count()).where(a.c.rollout_id == rollout_id, a.c.detail.like(marker + "%")).group_by(a.c.status)
    return {s: n for s, n in conn.execute(q)}


def wave_upgrades(db: Database, conn: Connection, rollout: Rollout, idx: int) -> int:
    """Devices of wave ``idx`` that ran another version of the rollout's bundle before it (the
    rest install the bundle for the first time: there is nothing to regress from)."""
    a = db.t.assignments
    q = sa.select(sa.func.count()).where(
        a.c.rollout_id == rollout.id, a.c.wave_idx == idx, a.c.from_name == rollout.bundle_name, a.c.from_version != rollout.bundle_version
    )
    return int(conn.execute(q).scalar() or 0)


def control_device_telemetry(db: Database, conn: Connection, rollout: Rollout, old_versions: list[str], cohort: set[str], since: float) -> list[DeviceTelemetry]:
    """Per device of the control: selected (``cohort``), not in this rollout, on one of
    ``old_versions`` of the rollout's bundle, telemetry received since ``since`` (less 1 s): the
    same window as the wave it is compared with."""
    if not old_versions:
        return []
    a, tel = db.t.assignments, db.t.telemetry
    in_rollout = sa.select(a.c.device_id).where(a.c.rollout_id == rollout.id)
    rows = _per_device(
        db,
        conn,
        [tel.c.device_id.not_in(in_rollout), tel.c.version_name == rollout.bundle_name, tel.c.version_version.in_(old_versions), tel.c.received_at >= since - 1.0],
        rollout.settings.strata_tag,
    )
    return [r for r in rows if r.device_id in cohort]


class _Tags:
    """Fleets share a few tag sets: parse each text once."""

    def __init__(self) -> None:
        self._parsed: dict[str, dict[str, Any]] = {}

    def __call__(self, text: str | None) -> dict[str, Any]:
        key = text or "{}"
        if key not in self._parsed:
            self._parsed[key] = json.loads(key)
        return self._parsed[key]


def selected_devices(db: Database, conn: Connection, selector: Selector) -> list[tuple[str, str | None]]:
    """(id, profile) of the enrolled devices the selector matches, by id."""
    d = db.t.devices
    q = sa.select(d.c.id, d.c.profile, d.c.tags).order_by(d.c.id)
    if selector.profile is not None:
        q = q.where(d.c.profile == selector.profile)
    if selector.devices is not None:
        q = q.where(d.c.id.in_(selector.devices))
    tags = _Tags()
    return [(device_id, profile) for device_id, profile, text in conn.execute(q) if selector.matches(device_id, profile, tags(text))]


def cohort(db: Database, conn: Connection, selector: Selector, profile_ok: Callable[[str | None], bool] | None = None) -> set[str]:
    """Ids of the enrolled devices the selector matches (and whose profile ``profile_ok`` accepts:
    a rollout compares only profiles it can deliver to)."""
    return {device_id for device_id, profile in selected_devices(db, conn, selector) if profile_ok is None or profile_ok(profile)}


def matching_devices_for_update(db: Database, conn: Connection, selector: Selector) -> list[Any]:
    """Rows (id, profile, active_name, active_version) of every device the selector matches.

    FOR UPDATE (PostgreSQL): one replica at a time decides which devices join a rollout. In id
    order, as ingest locks device rows: two orders of the same rows can deadlock each other.
    """
    d = db.t.devices
    rows = conn.execute(sa.select(d.c.id, d.c.tags, d.c.profile, d.c.active_name, d.c.active_version).order_by(d.c.id).with_for_update()).all()
    tags = _Tags()
    return [row for row in rows if selector.matches(row.id, row.profile, tags(row.tags))]


def held_for_window(db: Database, conn: Connection, rollout_id: str, idx: int, marker: str) -> int:
    """Devices of wave ``idx`` whose command waits for their maintenance window (detail ``marker``...)."""
    a = db.t.assignments
    q = sa.select(sa.func.count()).where(a.c.rollout_id == rollout_id, a.c.wave_idx == idx, a.c.status == A.PENDING.value, a.c.detail.like(marker + "%"))
    return int(conn.execute(q).scalar() or 0)


def device_profiles_and_tags(db: Database, conn: Connection, device_ids: list[str]) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(id, profile, tags) of the given devices (what a selector matches on)."""
    d = db.t.devices
    tags = _Tags()
    out: list[tuple[str, str | None, dict[str, Any]]] = []
    for i in range(0, len(device_ids), 5000):
        for device_id, profile, text in conn.execute(sa.select(d.c.id, d.c.profile, d.c.tags).where(d.c.id.in_(device_ids[i : i + 5000]))):
            out.append((device_id, profile, tags(text)))
    return out


def devices_in_rollout(db: Database, conn: Connection, rollout_id: str) -> set[str]:
    """Devices already assigned in this rollout."""
    a = db.t.assignments
    return {row[0] for row in conn.execute(sa.select(a.c.device_id).where(a.c.rollout_id == rollout_id))}


def devices_busy_elsewhere(db: Database, conn: Connection, rollout_id: str) -> set[str]:
    """Devices with an in-flight assignment in another live rollout."""
    a, r = db.t.assignments, db.t.rollouts
    q = (
        sa.select(a.c.device_id)
        .join(r, r.c.id == a.c.rollout_id)
        .where(r.c.id != rollout_id, r.c.status.in_([s.value for s in LIVE_ROLLOUT]), a.c.status.in_(literal_statuses(IN_FLIGHT_ASSIGNMENT)))
    )
    return {row[0] for row in conn.execute(q)}


def device_signature(db: Database, conn: Connection) -> tuple[Any, ...]:
    """(count, newest ``enrolled_at``) of the device table: changes when a device enrols."""
    d = db.t.devices
    return tuple(conn.execute(sa.select(sa.func.count(), sa.func.max(d.c.enrolled_at))).one())


def unpublished_assignments(db: Database, conn: Connection, rollout_id: str) -> tuple[list[Any], list[Any]]:
    """(assign commands still ``pending``, rollback orders decided but not sent) of a rollout."""
    a = db.t.assignments
    pending = conn.execute(sa.select(a).where(a.c.rollout_id == rollout_id, a.c.status == A.PENDING.value)).all()
    rollbacks = conn.execute(sa.select(a).where(a.c.rollout_id == rollout_id, a.c.status == A.REVERTING.value, a.c.rollback_sent_at.is_(None))).all()
    return [r._mapping for r in pending], [r._mapping for r in rollbacks]
