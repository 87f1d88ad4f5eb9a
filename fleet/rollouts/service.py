"""Rollout operations: create, start, pause, resume, abort, promote, status, list.

These only change state in the database (compare-and-set on the status column, so two
replicas or an operator racing the reconciler cannot both win); the reconciler does the work
that follows (choosing devices, sending commands). Each operation is allowed only from the
states in :data:`~edgeops.fleet.rollouts.status.ACTION_FROM`, else IllegalTransitionError.

Waves are numbered from 1 in text people read (reasons, audit actions such as ``wave1:passed``,
errors); ``idx`` fields stay 0-based, and :func:`rollout_status` gives each wave its ``number``.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgeops.errors import IllegalTransitionError
from edgeops.fleet.clock import resolve
from edgeops.fleet.db import Database, dumps
from edgeops.fleet.rollouts.queries import UnknownRolloutError, load_rollout, load_wave, load_waves, selected_devices  # noqa: F401  (UnknownRolloutError: the API answers 404)
from edgeops.fleet.rollouts.settings import RolloutSettings
from edgeops.fleet.rollouts.status import (
    FAILED_ASSIGNMENT,
    FINAL_ASSIGNMENT,
    AssignmentStatus,
    RolloutStatus as R,
    WaveStatus as W,
    check_action,
    check_rollout,
    check_wave,
    wave_label,
)
from edgeops.fleet.rollouts.resolution import RolloutTargets, check_selection, exclusions
from edgeops.fleet.targets import find_targets


def audit(db: Database, conn: Connection, rollout_id: str, action: str, detail: str = "", now: float | None = None) -> None:
    """Append one line to a rollout's history."""
    conn.execute(db.t.audit.insert().values(ts=resolve(now), rollout_id=rollout_id, action=action, detail=detail[:4000]))


def set_rollout_status(db: Database, conn: Connection, rollout_id: str, current: R | str, new: R | str, reason: str = "", now: float | None = None, **extra) -> None:
    """Move a rollout ``current -> new`` (checked against the table; compare-and-set in SQL)."""
    check_rollout(rollout_id, current, new)
    now = resolve(now)
    t = db.t.rollouts
    res = conn.execute(
        t.update().where(t.c.id == rollout_id, t.c.status == R(current).value).values(status=R(new).value, status_reason=reason[:4000], updated_at=now, **extra)
    )
    if res.rowcount != 1:
        actual = conn.execute(sa.select(t.c.status).where(t.c.id == rollout_id)).scalar()
        raise IllegalTransitionError(f"rollout {rollout_id}: status changed concurrently (expected {R(current).value}, found {actual})")
    audit(db, conn, rollout_id, f"status:{R(new).value}", reason, now)


def set_wave_status(db: Database, conn: Connection, rollout_id: str, idx: int, current: W | str, new: W | str, reason: str = "", gates: list | None = None, now: float | None = None) -> None:
    """Move a wave ``current -> new`` (checked against the table; compare-and-set in SQL)."""
    check_wave(rollout_id, idx, current, new)
    now = resolve(now)
    t = db.t.waves
    values: dict = {"status": W(new).value, "reason": reason[:4000]}
    if W(new) is W.RUNNING and W(current) is W.PENDING:
        values["started_at"] = now
    if W(new) in (W.PASSED, W.FAILED, W.CANCELLED):
        values["finished_at"] = now
    if gates is not None:
        values["gates"] = dumps(gates)
    res = conn.execute(t.update().where(t.c.rollout_id == rollout_id, t.c.idx == idx, t.c.status == W(current).value).values(**values))
    if res.rowcount != 1:
        raise IllegalTransitionError(f"rollout {rollout_id} {wave_label(idx)}: status changed concurrently (expected {W(current).value})")
    audit(db, conn, rollout_id, f"wave{idx + 1}:{W(new).value}", reason, now)


class PromotionRefusedError(IllegalTransitionError):
    """A rollout requires that its version finished a rollout in an earlier channel, and it has not."""


def finished_channels(db: Database, conn: Connection, bundle_name: str, bundle_version: str) -> set[str]:
    """Channels in which a rollout of this bundle version finished."""
    t = db.t.rollouts
    rows = conn.execute(sa.select(t.c.settings).where(t.c.bundle_name == bundle_name, t.c.bundle_version == bundle_version, t.c.status == R.FINISHED.value))
    return {c for (text,) in rows if (c := json.loads(text).get("channel"))}


def published_channel(settings: RolloutSettings, custom: dict) -> RolloutSettings:
    """``settings`` with the channel and the required earlier channel the target's signed
    ``custom`` names (unchanged for a target published without channels);
    PromotionRefusedError for a channel the version was not published to."""
    channels = custom.get("channels")
    if not isinstance(channels, dict) or not channels:
        return settings
    channel = settings.channel or custom.get("channel")
    ref = f"{settings.bundle_name}@{settings.bundle_version}"
    if channel not in channels:
        raise PromotionRefusedError(
            f"{ref}: rollout into channel {channel} refused: the version is published in channel(s) {', '.join(sorted(channels))}, not {channel}; "
            f"`edgeops publish BUNDLE --channel {channel}` first"
        )
    required = settings.requires_channel or channels.get(channel)
    if required == channel:
        required = None
    return settings.model_copy(update={"channel": channel, "requires_channel": required})


def create_rollout(db: Database, settings: RolloutSettings, repo_dir: str | Path, now: float | None = None) -> dict:
    """Create a rollout in ``created`` with all its waves ``pending``; the bundle must be a signed
    target, and, with ``requires_channel``, have finished a rollout in that channel.

    Every target of the version (one per hardware profile it is published for) is pinned with
    the rollout; each device later gets its profile's (:mod:`~edgeops.fleet.rollouts.resolution`).
    NoMatchingTargetError when the selection's devices run only profiles the version is not
    published for.

    A target published to channels (``edgeops publish --channel``) fixes both: the rollout's
    channel defaults to the one it was last published to and must be one it was published to;
    its ``requires_channel`` defaults to the earlier channel the publisher signed for that one."""
    ref = f"{settings.bundle_name}@{settings.bundle_version}"
    records = find_targets(repo_dir, settings.bundle_name, settings.bundle_version)
    targets = RolloutTargets.from_records(ref, records)
    now = resolve(now)
    with db.connect() as conn:
        check_selection(targets, [p for _, p in selected_devices(db, conn, settings.selector)])
    settings = _published_channels(settings, records)
    if settings.requires_channel is not None:
        with db.connect() as conn:
            done = finished_channels(db, conn, settings.bundle_name, settings.bundle_version)
        if settings.requires_channel not in done:
            into = f" into channel {settings.channel}" if settings.channel else ""
            raise PromotionRefusedError(
                f"{settings.bundle_name}@{settings.bundle_version}: promotion{into} refused: no rollout of this version finished in channel "
                f"{settings.requires_channel} (finished in: {', '.join(sorted(done)) or 'none'}); roll it out there first"
            )
    target = targets.primary()
    rollout_id = "r-" + uuid.uuid4().hex[:10]
    with db.begin() as conn:
        conn.execute(
            db.t.rollouts.insert().values(
                id=rollout_id,
                bundle_name=settings.bundle_name,
                bundle_version=settings.bundle_version,
                release=target.release,
                target_name=target.name,
                target_sha256=target.sha256,
                target_length=target.length,
                targets=targets.to_json(),
                selector=settings.selector.model_dump_json(),
                settings=settings.model_dump_json(),
                status=R.CREATED.value,
                status_reason="",
                current_wave=-1,
                created_at=now,
                updated_at=now,
            )
        )
        conn.execute(db.t.waves.insert(), [{"rollout_id": rollout_id, "idx": i, "percent": p, "status": W.PENDING.value, "gates": "[]", "reason": ""} for i, p in enumerate(settings.waves)])
        per_profile = f" (targets for {', '.join(targets.profiles)})" if len(targets.profiles) > 1 else ""
        audit(db, conn, rollout_id, "create", f"{ref}{per_profile} to {settings.selector.describe()} in waves {settings.waves}", now)
    return rollout_status(db, rollout_id)


def _published_channels(settings: RolloutSettings, records: dict) -> RolloutSettings:
    """:func:`published_channel` for every profile's target of the version: each must allow the
    rollout's channel, and they must agree on it and on the earlier channel it requires."""
    decided: dict[tuple, list[str]] = {}
    for profile, record in sorted(records.items()):
        try:
            out = published_channel(settings, record.custom)
        except PromotionRefusedError as e:
            raise PromotionRefusedError(f"{e} (the target built for profile {profile})" if len(records) > 1 else str(e)) from e
        decided.setdefault((out.channel, out.requires_channel), []).append(profile)
    if len(decided) > 1:
        ways = "; ".join(f"{', '.join(ps)}: channel {c or '-'} requiring {req or '-'}" for (c, req), ps in decided.items())
        raise PromotionRefusedError(
            f"{settings.bundle_name}@{settings.bundle_version}: its profiles' targets are published to different channels ({ways}); "
            "publish every profile's bundle to the same channels, or give --channel"
        )
    channel, required = next(iter(decided))
    return settings.model_copy(update={"channel": channel, "requires_channel": required})


def start_rollout(db: Database, rollout_id: str, actor: str = "operator", now: float | None = None) -> dict:
    """``created -> running``; the reconciler starts the first wave on its next tick."""
    now = resolve(now)
    with db.begin() as conn:
        r = load_rollout(db, conn, rollout_id)
        check_action(rollout_id, "start", r.status)
        set_rollout_status(db, conn, rollout_id, r.status, R.RUNNING, f"started by {actor}", now, started_at=now)
    return rollout_status(db, rollout_id)


def pause_rollout(db: Database, rollout_id: str, actor: str = "operator", reason: str = "", now: float | None = None) -> dict:
    """``running|waiting_approval -> paused``: no new wave starts; commands already decided still go out."""
    now = resolve(now)
    with db.begin() as conn:
        r = load_rollout(db, conn, rollout_id)
        check_action(rollout_id, "pause", r.status)
        set_rollout_status(db, conn, rollout_id, r.status, R.PAUSED, reason or f"paused by {actor}", now)
    return rollout_status(db, rollout_id)


def resume_rollout(db: Database, rollout_id: str, actor: str = "operator", now: float | None = None) -> dict:
    """``paused -> running`` (or back to ``waiting_approval``); a halted wave runs again and its gates are evaluated afresh."""
    now = resolve(now)
    with db.begin() as conn:
        r = load_rollout(db, conn, rollout_id)
        check_action(rollout_id, "resume", r.status)
        wave = load_wave(db, conn, rollout_id, r.current_wave)
        if wave and wave.status is W.HALTED:
            # evaluated afresh: the judged gates' looks and inconclusive timers start over
            set_wave_status(db, conn, rollout_id, wave.idx, W.HALTED, W.RUNNING, f"resumed by {actor}", gates=[], now=now)
        if wave and wave.status is W.PASSED and r.settings.approve_each_wave and wave.idx < r.last_wave:
            # paused while waiting for approval: resuming must not skip the approval
            set_rollout_status(db, conn, rollout_id, r.status, R.WAITING_APPROVAL, f"resumed by {actor}; {wave_label(wave.idx)} passed and awaits approval", now)
        else:
            set_rollout_status(db, conn, rollout_id, r.status, R.RUNNING, f"resumed by {actor}", now)
    return rollout_status(db, rollout_id)


def promote_rollout(db: Database, rollout_id: str, actor: str = "operator", now: float | None = None) -> dict:
    """Start the next wave: approves a wave that passed (``waiting_approval``), or, from
    ``paused``, overrides the gates of the current wave (recorded in the history)."""
    now = resolve(now)
    with db.begin() as conn:
        r = load_rollout(db, conn, rollout_id)
        check_action(rollout_id, "promote", r.status)
        wave = load_wave(db, conn, rollout_id, r.current_wave)
        if wave and wave.status in (W.RUNNING, W.HALTED):
            set_wave_status(db, conn, rollout_id, wave.idx, wave.status, W.PASSED, f"gates overridden by {actor}", now=now)
        set_rollout_status(db, conn, rollout_id, r.status, R.RUNNING, f"promoted by {actor}", now)
    return rollout_status(db, rollout_id)


def abort_rollout(db: Database, rollout_id: str, actor: str = "operator", reason: str = "", now: float | None = None) -> dict:
    """``-> aborting``: the reconciler orders every device of the rollout back to its previous version."""
    now = resolve(now)
    with db.begin() as conn:
        r = load_rollout(db, conn, rollout_id)
        check_action(rollout_id, "abort", r.status)
        set_rollout_status(db, conn, rollout_id, r.status, R.ABORTING, reason or f"aborted by {actor}", now)
    return rollout_status(db, rollout_id)


ACTIONS = {"start": start_rollout, "pause": pause_rollout, "resume": resume_rollout, "promote": promote_rollout, "abort": abort_rollout}


def _wave_counts(db: Database, conn: Connection, rollout_id: str) -> dict[int, dict[str, int]]:
    t = db.t.assignments
    out: dict[int, dict[str, int]] = {}
    for idx, status, n in conn.execute(sa.select(t.c.wave_idx, t.c.status, sa.func.count()).where(t.c.rollout_id == rollout_id).group_by(t.c.wave_idx, t.c.status)):
        out.setdefault(idx, {})[status] = n
    return out


def _held_for_window(db: Database, conn: Connection, rollout_id: str) -> dict[int, int]:
    """Per wave, devices whose command waits for their maintenance window."""
    from edgeops.fleet.rollouts.windows import WINDOW_WAIT  # the marker the reconciler writes

    t = db.t.assignments
    q = sa.select(t.c.wave_idx, sa.func.count()).where(t.c.rollout_id == rollout_id, t.c.status == AssignmentStatus.PENDING.value, t.c.detail.like(WINDOW_WAIT + "%")).group_by(t.c.wave_idx)
    return {idx: n for idx, n in conn.execute(q)}


def _summary(counts: dict[str, int]) -> dict:
    total = sum(counts.values())
    return {
        "devices": total,
        "by_status": dict(sorted(counts.items())),
        "reported": sum(counts.get(s.value, 0) for s in FINAL_ASSIGNMENT),
        "succeeded": counts.get(AssignmentStatus.SUCCEEDED.value, 0),
        "failed": sum(counts.get(s.value, 0) for s in FAILED_ASSIGNMENT),
    }


def rollout_status(db: Database, rollout_id: str, history: bool = False) -> dict:
    """Everything about one rollout: settings, status, waves with counts and gate verdicts."""
    with db.connect() as conn:
        r = load_rollout(db, conn, rollout_id)
        waves = load_waves(db, conn, rollout_id)
        counts = _wave_counts(db, conn, rollout_id)
        held = _held_for_window(db, conn, rollout_id) if r.settings.maintenance else {}
        excluded = exclusions(r.targets, selected_devices(db, conn, r.settings.selector) if not r.targets.serves_any else [])
        hist = []
        if history:
            hist = [
                {"ts": a.ts, "action": a.action, "detail": a.detail}
                for a in conn.execute(sa.select(db.t.audit).where(db.t.audit.c.rollout_id == rollout_id).order_by(db.t.audit.c.id))
            ]
    total: dict[str, int] = {}
    for c in counts.values():
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    out = {
        "id": r.id,
        "bundle": f"{r.bundle_name}@{r.bundle_version}",
        "target": {"name": r.target_name, "sha256": r.target_sha256, "length": r.target_length, "release": r.release},
        # each profile's target ("*": one target for every device, a rollout stored before per-profile targets)
        "targets": r.targets.to_dict(),
        # selected devices the rollout leaves out (no target for their profile), with the reason
        "excluded": excluded,
        "status": r.status.value,
        "reason": r.status_reason,
        "current_wave": r.current_wave,
        "created_at": r.created_at,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "settings": json.loads(r.settings.model_dump_json()),
        "waves": [
            {
                "idx": w.idx,
                "number": w.idx + 1,  # how people count waves
                "percent": w.percent,
                "status": w.status.value,
                "started_at": w.started_at,
                "finished_at": w.finished_at,
                "reason": w.reason,
                "gates": w.gates,
                "waiting_for_window": held.get(w.idx, 0),
                **_summary(counts.get(w.idx, {})),
            }
            for w in waves
        ],
        **_summary(total),
    }
    if history:
        out["history"] = hist
    return out


def list_rollouts(db: Database, status: str | None = None) -> list[dict]:
    """Rollouts, newest first, with per-status device counts."""
    t = db.t.rollouts
    q = sa.select(t).order_by(t.c.created_at.desc())
    if status:
        q = q.where(t.c.status == status)
    with db.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q)]
        a = db.t.assignments
        counts: dict[str, dict[str, int]] = {}
        for rid, st, n in conn.execute(sa.select(a.c.rollout_id, a.c.status, sa.func.count()).group_by(a.c.rollout_id, a.c.status)):
            counts.setdefault(rid, {})[st] = n
    return [
        {
            "id": r["id"],
            "bundle": f"{r['bundle_name']}@{r['bundle_version']}",
            "status": r["status"],
            "reason": r["status_reason"],
            "current_wave": r["current_wave"],
            "waves": len(json.loads(r["settings"])["waves"]),
            "created_at": r["created_at"],
            **_summary(counts.get(r["id"], {})),
        }
        for r in rows
    ]


def rollout_assignments(db: Database, rollout_id: str) -> list[dict]:
    """Every device of a rollout with its wave, command and status."""
    t = db.t.assignments
    with db.connect() as conn:
        r = load_rollout(db, conn, rollout_id)
        rows = conn.execute(sa.select(t).where(t.c.rollout_id == rollout_id).order_by(t.c.wave_idx, t.c.device_id)).all()
    return [
        {
            "device_id": m["device_id"],
            "wave": m["wave_idx"],
            "status": m["status"],
            "command_id": m["command_id"],
            "seq": m["seq"],
            "from": None if m["from_name"] is None else f"{m['from_name']}@{m['from_version']}",
            "target": r.targets.by_name(m["target_name"]).name,  # the target of the device's profile
            "detail": m["detail"],
            "sent_at": m["sent_at"],
            "updated_at": m["updated_at"],
            "rollback_command_id": m["rollback_command_id"],
        }
        for m in (r._mapping for r in rows)
    ]
