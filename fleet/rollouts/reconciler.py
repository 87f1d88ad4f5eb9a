"""The rollout reconciler: a periodic loop that dispatches on each live rollout's status.

Per tick and rollout (everything it decides is written to the database before it acts, so a
console restarted at any point continues from the rows, never re-assigning a device):

- ``running``: publish commands still ``pending``; time out devices that went offline or never
  reported; start the first wave if none started; evaluate the current wave's gates (PASS ->
  the wave passes and the next starts, or the rollout waits for approval, or finishes; FAIL ->
  the wave halts and the rollout pauses or aborts, per ``on_gate_failure``); top up the last
  wave with devices that started to match the selector since it began.
- ``paused`` / ``waiting_approval``: publish what was already decided; apply timeouts.
- ``aborting``: cancel pending waves, order every device of the rollout back to the version it
  ran before (signed rollback commands), then ``aborted``.

Device selection for a wave: every enrolled device matching the selector, ordered by
sha256(rollout id + device id) (deterministic, unbiased by naming), minus devices already in
this rollout and devices busy in another live rollout; the wave takes devices until the
rollout covers ``ceil(percent * matching)``. Devices that enrol later are counted when the next
wave starts, so they join it.

Waves are numbered from 1 in every text a person reads (reasons, audit actions, logs); the
``idx`` columns and API fields stay 0-based.

Cost per tick, so a 10,000-device rollout does not pay O(devices) every second:

- gate inputs from telemetry (new-version aggregates, the old-version baseline) are queried only
  when a gate that reads them is configured; the baseline at most every ``BASELINE_TTL_S``;
- timeouts are applied at most every ``EXPIRE_EVERY_S`` per rollout (they are minutes long);
- the last wave's top-up (which reads every device row) runs when the device table changed
  (a new enrolment: count or newest ``enrolled_at``), or every ``TOPUP_EVERY_S`` (catches tag
  or profile edits of enrolled devices, and devices freed by another rollout).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgeops.errors import IllegalTransitionError
from edgeops.fleet.command_seq import allocate_seqs
from edgeops.fleet.commands import CommandSender, assign_command, rollback_command
from edgeops.fleet.config import RolloutConfig
from edgeops.fleet.db import Database, dumps, float_sum, weighted_p95_sums
from edgeops.fleet.rollouts import gates as gates_mod
from edgeops.fleet.rollouts.service import load_rollout, set_rollout_status, set_wave_status, settings_of
from edgeops.fleet.rollouts.settings import RolloutSettings, Selector
from edgeops.fleet.rollouts.status import IN_FLIGHT_ASSIGNMENT, LIVE_ROLLOUT, AssignmentStatus as A, RolloutStatus as R, WaveStatus as W, wave_label
from edgeops.fleet.targets import list_targets, published_versions

log = logging.getLogger("edgeops.fleet.reconciler")

BASELINE_WINDOW_S = 3600.0  # old-version telemetry this long before the rollout counts as baseline
BASELINE_TTL_S = 30.0  # a rollout's old-version baseline is recomputed at most this often
EXPIRE_EVERY_S = 5.0  # timeouts are checked at most this often per rollout (reconciler clock)
TOPUP_EVERY_S = 10.0  # the last wave re-reads every device at least this often (tag edits)


def _lit(statuses) -> list:
    return [sa.literal_column(f"'{A(s).value}'") for s in statuses]


def selection_order(rollout_id: str, device_id: str) -> str:
    """Deterministic position of a device in a rollout's selection order."""
    return hashlib.sha256(f"{rollout_id}:{device_id}".encode()).hexdigest()


class Reconciler:
    """Drives rollouts from the database; call :meth:`tick` periodically (only on the leader)."""

    def __init__(
        self,
        db: Database,
        config: RolloutConfig | None = None,
        sender: CommandSender | None = None,
        repo_dir: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        on_verdicts: Callable[[str, int, list], None] | None = None,
    ):
        self.db = db
        self.config = config or RolloutConfig()
        self.sender = sender
        self.repo_dir = repo_dir
        self.clock = clock
        self.on_verdicts = on_verdicts
        # Per-rollout memory of the cheap-path checks (lost on restart: the first tick does it all).
        self._expired_at: dict[str, float] = {}
        self._topup: dict[str, tuple[tuple, float]] = {}  # rollout -> (device-table signature, when)
        self._baseline: dict[str, tuple[float, tuple]] = {}  # rollout -> (when, baseline row)

    # -- loop ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Reconcile every live rollout once; errors are logged per rollout, never raised."""
        t = self.db.t.rollouts
        with self.db.connect() as conn:
            ids = [r[0] for r in conn.execute(sa.select(t.c.id).where(t.c.status.in_([s.value for s in LIVE_ROLLOUT])).order_by(t.c.created_at))]
        for gone in set(self._expired_at) | set(self._topup) | set(self._baseline):
            if gone not in ids:
                self._expired_at.pop(gone, None)
                self._topup.pop(gone, None)
                self._baseline.pop(gone, None)
        for rid in ids:
            try:
                self.reconcile(rid)
            except IllegalTransitionError as e:
                # an operator (or another replica) changed the rollout between our read and write
                log.info("rollout %s: %s; retrying next tick", rid, e)
            except Exception:
                log.exception("rollout %s: reconcile failed; retrying next tick", rid)

    def reconcile(self, rollout_id: str) -> None:
        """One step for one rollout, dispatched on its status."""
        with self.db.connect() as conn:
            r = load_rollout(self.db, conn, rollout_id)
        status = R(r["status"])
        if status is R.ABORTING:
            self._abort(r)
            return
        if status not in LIVE_ROLLOUT:
            return
        self._expire(r)
        self.publish_pending(rollout_id)
        if status is R.RUNNING:
            self._advance(r)

    # -- running ---------------------------------------------------------------------------
    def _advance(self, r: dict) -> None:
        settings = settings_of(r)
        now = self.clock()
        if r["current_wave"] < 0:
            self._start_wave(r, 0, settings)
            return
        with self.db.connect() as conn:
            wave = dict(conn.execute(sa.select(self.db.t.waves).where(self.db.t.waves.c.rollout_id == r["id"], self.db.t.waves.c.idx == r["current_wave"])).first()._mapping)
        idx = wave["idx"]
        last = idx == len(settings.waves) - 1
        if wave["status"] == W.PASSED.value:
            if last:
                with self.db.begin() as conn:
                    set_rollout_status(self.db, conn, r["id"], R.RUNNING, R.FINISHED, "last wave passed", now, finished_at=now)
            else:
                self._start_wave(r, idx + 1, settings)
            return
        if wave["status"] != W.RUNNING.value:
            return
        if last and self._topup_due(r["id"]):
            # devices that started to match since the last wave began join it
            with self.db.begin() as conn:
                added = self._assign(conn, r, idx, settings.waves[idx], settings.selector)
            if added:
                self.publish_pending(r["id"])
        stats = self.wave_stats(r, wave, settings)
        outcome, verdicts = gates_mod.evaluate(stats, settings)
        vdicts = [v.to_dict() for v in verdicts]
        if self.on_verdicts:
            self.on_verdicts(r["id"], idx, vdicts)
        if outcome is gates_mod.Outcome.WAIT:
            with self.db.begin() as conn:
                conn.execute(self.db.t.waves.update().where(self.db.t.waves.c.rollout_id == r["id"], self.db.t.waves.c.idx == idx).values(gates=dumps(vdicts)))
            return
        if outcome is gates_mod.Outcome.PASS:
            with self.db.begin() as conn:
                set_wave_status(self.db, conn, r["id"], idx, W.RUNNING, W.PASSED, "all gates passed", vdicts, now=now)
                if last:
                    set_rollout_status(self.db, conn, r["id"], R.RUNNING, R.FINISHED, "last wave passed", now, finished_at=now)
                elif settings.approve_each_wave:
                    set_rollout_status(self.db, conn, r["id"], R.RUNNING, R.WAITING_APPROVAL, f"{wave_label(idx)} passed; promote to start {wave_label(idx + 1)}", now)
            if not last and not settings.approve_each_wave:
                self._start_wave(r, idx + 1, settings)
            return
        failed = [v for v in verdicts if v.outcome is gates_mod.Outcome.FAIL]
        reason = f"{wave_label(idx)} halted: " + "; ".join(
            f"{v.gate} {v.measured:.4g} vs {v.threshold:.4g} ({v.detail})" if v.measured is not None and v.threshold is not None else f"{v.gate} ({v.detail})" for v in failed
        )
        abort = settings.on_gate_failure == "abort"
        with self.db.begin() as conn:
            set_wave_status(self.db, conn, r["id"], idx, W.RUNNING, W.HALTED, reason, vdicts, now=now)
            set_rollout_status(self.db, conn, r["id"], R.RUNNING, R.ABORTING if abort else R.PAUSED, reason, now)
        log.warning("rollout %s: %s -> %s", r["id"], reason, "aborting" if abort else "paused")
        if abort:
            with self.db.connect() as conn:
                self._abort(load_rollout(self.db, conn, r["id"]))

    def _start_wave(self, r: dict, idx: int, settings: RolloutSettings) -> None:
        now = self.clock()
        with self.db.begin() as conn:
            t = self.db.t.rollouts
            # compare-and-set on (status, current_wave): one replica, one start
            res = conn.execute(
                t.update().where(t.c.id == r["id"], t.c.status == R.RUNNING.value, t.c.current_wave == idx - 1).values(current_wave=idx, updated_at=now)
            )
            if res.rowcount != 1:
                return
            set_wave_status(self.db, conn, r["id"], idx, W.PENDING, W.RUNNING, f"{settings.waves[idx]:g}% of the selection", now=now)
            n = self._assign(conn, r, idx, settings.waves[idx], settings.selector)
        if idx == len(settings.waves) - 1:
            self._topup[r["id"]] = (self._device_signature(), self.clock())  # _assign just read every device
        log.info("rollout %s: %s started with %d devices", r["id"], wave_label(idx), n)
        self.publish_pending(r["id"])

    def _device_signature(self) -> tuple:
        d = self.db.t.devices
        with self.db.connect() as conn:
            return tuple(conn.execute(sa.select(sa.func.count(), sa.func.max(d.c.enrolled_at))).first())

    def _topup_due(self, rollout_id: str) -> bool:
        """True when the last wave should look for newly matching devices (see module doc)."""
        sig, now = self._device_signature(), self.clock()
        last = self._topup.get(rollout_id)
        if last is not None and last[0] == sig and now - last[1] < TOPUP_EVERY_S:
            return False
        self._topup[rollout_id] = (sig, now)
        return True

    def _assign(self, conn: Connection, r: dict, idx: int, percent: float, selector: Selector) -> int:
        """Create assignments (and per-device seqs) so the rollout covers ``percent`` of the selection."""
        d, a = self.db.t.devices, self.db.t.assignments
        # FOR UPDATE (PostgreSQL): one replica at a time decides which devices join a rollout
        devices = conn.execute(sa.select(d.c.id, d.c.tags, d.c.profile, d.c.active_name, d.c.active_version).with_for_update()).all()
        parsed: dict[str, dict] = {}  # fleets share a few tag sets: parse each text once

        def tags_of(text: str | None) -> dict:
            key = text or "{}"
            if key not in parsed:
                parsed[key] = json.loads(key)
            return parsed[key]

        matching = [row for row in devices if selector.matches(row.id, row.profile, tags_of(row.tags))]
        assigned = {row[0] for row in conn.execute(sa.select(a.c.device_id).where(a.c.rollout_id == r["id"]))}
        rollouts = self.db.t.rollouts
        busy = {
            row[0]
            for row in conn.execute(
                sa.select(a.c.device_id)
                .join(rollouts, rollouts.c.id == a.c.rollout_id)
                .where(rollouts.c.id != r["id"], rollouts.c.status.in_([s.value for s in LIVE_ROLLOUT]), a.c.status.in_(_lit(IN_FLIGHT_ASSIGNMENT)))
            )
        }
        target = math.ceil(percent / 100.0 * len(matching) - 1e-9)
        need = target - len(assigned)
        if need <= 0:
            return 0
        candidates = sorted((row for row in matching if row.id not in assigned and row.id not in busy), key=lambda row: selection_order(r["id"], row.id))[:need]
        if not candidates:
            return 0
        now = self.clock()
        expires = now + self.config.command_ttl_s
        def on_target(row) -> bool:
            return row.active_name == r["bundle_name"] and row.active_version == r["bundle_version"]

        seqs = allocate_seqs(self.db, conn, [row.id for row in candidates if not on_target(row)])
        rows = []
        for row in candidates:
            done = on_target(row)
            rows.append(
                {
                    "rollout_id": r["id"],
                    "device_id": row.id,
                    "wave_idx": idx,
                    "bundle_name": r["bundle_name"],
                    "bundle_version": r["bundle_version"],
                    "command_id": f"{r['id']}-{row.id}-{uuid.uuid4().hex[:8]}",
                    "seq": 0 if done else seqs[row.id],
                    "expires": expires,
                    "status": A.SUCCEEDED.value if done else A.PENDING.value,
                    "from_name": row.active_name,
                    "from_version": row.active_version,
                    "created_at": now,
                    "updated_at": now,
                    "detail": "already on the target version" if done else "",
                }
            )
        conn.execute(a.insert(), rows)
        return len(rows)

    # -- gates input -----------------------------------------------------------------------
    def wave_stats(self, r: dict, wave: dict, settings: RolloutSettings | None = None) -> gates_mod.WaveStats:
        """Counts and telemetry aggregates of one wave, plus the old-version baseline.

        Telemetry is read only for the gates configured to look at it (``max_error_rate``,
        ``max_latency_regression``, ``min_agreement``); the baseline only for the latency gate.
        """
        settings = settings or settings_of(r)
        a = self.db.t.assignments
        now = self.clock()
        started = now if wave["started_at"] is None else wave["started_at"]
        wants_new = settings.max_error_rate is not None or settings.max_latency_regression is not None or settings.min_agreement is not None
        with self.db.connect() as conn:
            counts = {s: n for s, n in conn.execute(sa.select(a.c.status, sa.func.count()).where(a.c.rollout_id == r["id"], a.c.wave_idx == wave["idx"]).group_by(a.c.status))}
            new = self._new_version_telemetry(conn, r, wave, started) if wants_new else (None,) * 8
            base = self._baseline_of(conn, r, settings, now) if settings.max_latency_regression is not None else (None, None, None)
        inferences, errors, nans, p95w, p95n, p95c, agree, agree_n = new
        b_w, b_n, b_c = base

        def wavg(weighted, weight, count):
            return (float(weighted) / float(weight)) if weight else None

        return gates_mod.WaveStats(
            size=sum(counts.values()),
            counts=counts,
            started_at=started,
            now=now,
            new_p95_ms=wavg(p95w, p95n, p95c),
            new_latency_samples=int(p95c or 0) if p95n else 0,
            baseline_p95_ms=wavg(b_w, b_n, b_c),
            baseline_samples=int(b_c or 0) if b_n else 0,
            agreement=float(agree) if agree is not None else None,
            agreement_samples=int(agree_n or 0),
            inferences=int(inferences or 0),
            errors=int(errors or 0),
            nans=int(nans or 0),
        )

    def _new_version_telemetry(self, conn: Connection, r: dict, wave: dict, started: float) -> tuple:
        a, tel = self.db.t.assignments, self.db.t.telemetry
        members = sa.select(a.c.device_id).where(a.c.rollout_id == r["id"], a.c.wave_idx == wave["idx"]).scalar_subquery()
        return tuple(
            conn.execute(
                sa.select(
                    float_sum(tel.c.inference_count),
                    float_sum(tel.c.error_count),
                    float_sum(tel.c.nan_count),
                    *weighted_p95_sums(tel),
                    sa.func.count(tel.c.p95_ms),
                    sa.func.avg(tel.c.agreement),
                    sa.func.count(tel.c.agreement),
                ).where(
                    tel.c.device_id.in_(members),
                    tel.c.version_name == r["bundle_name"],
                    tel.c.version_version == r["bundle_version"],
                    # the console's receive clock, never the device's own ts_end (issue 13)
                    tel.c.received_at >= started - 1.0,
                )
            ).first()
        )

    def _baseline_of(self, conn: Connection, r: dict, settings: RolloutSettings, now: float) -> tuple:
        """p95 inputs of the cohort on the old versions (cached ``BASELINE_TTL_S``).

        Only what belongs to the question counts: devices the rollout's selector matches, and
        versions of the bundle the repository publishes other than the new one, received by the
        console since ``BASELINE_WINDOW_S`` before the rollout was created. A device outside the
        selection, or a version string no one published, cannot move the baseline. Sums are
        taken per device in SQL and added up here for the cohort.
        """
        hit = self._baseline.get(r["id"])
        if hit is not None and 0 <= now - hit[0] < BASELINE_TTL_S:
            return hit[1]
        tel = self.db.t.telemetry
        old_versions = sorted(v for n, v in published_versions(self._targets()) if n == r["bundle_name"] and v != r["bundle_version"])
        weighted = weight = count = 0.0
        if old_versions:
            cohort = self._cohort(conn, settings.selector)
            per_device = conn.execute(
                sa.select(tel.c.device_id, *weighted_p95_sums(tel), sa.func.count(tel.c.p95_ms))
                .where(
                    tel.c.version_name == r["bundle_name"],
                    tel.c.version_version.in_(old_versions),
                    tel.c.received_at >= r["created_at"] - BASELINE_WINDOW_S,
                )
                .group_by(tel.c.device_id)
            )
            for device_id, w, n, c in per_device:
                if device_id in cohort:
                    weighted, weight, count = weighted + float(w or 0), weight + float(n or 0), count + float(c or 0)
        base = (weighted, weight, count)
        self._baseline[r["id"]] = (now, base)
        return base

    def _cohort(self, conn: Connection, selector: Selector) -> set[str]:
        """Ids of the enrolled devices the selector matches."""
        d = self.db.t.devices
        q = sa.select(d.c.id, d.c.profile, d.c.tags)
        if selector.profile is not None:
            q = q.where(d.c.profile == selector.profile)
        if selector.devices is not None:
            q = q.where(d.c.id.in_(selector.devices))
        parsed: dict[str, dict] = {}
        out = set()
        for device_id, profile, tags in conn.execute(q):
            key = tags or "{}"
            if key not in parsed:
                parsed[key] = json.loads(key)
            if selector.matches(device_id, profile, parsed[key]):
                out.add(device_id)
        return out

    # -- timeouts --------------------------------------------------------------------------
    def _expire(self, r: dict) -> None:
        """Offline past the timeout, or no final report in time: the device counts as failed.

        Checked at most every ``EXPIRE_EVERY_S`` per rollout (the timeouts are minutes long).
        """
        a, d = self.db.t.assignments, self.db.t.devices
        now = self.clock()
        last = self._expired_at.get(r["id"])
        if last is not None and 0 <= now - last < EXPIRE_EVERY_S:
            return
        self._expired_at[r["id"]] = now
        off_cut = now - self.config.offline_timeout_s
        waiting = _lit(set(IN_FLIGHT_ASSIGNMENT) - {A.PENDING})  # pending: never sent, not the device's fault
        offline = sa.select(d.c.id).where(d.c.online.is_(False), sa.func.coalesce(d.c.last_seen, 0.0) < off_cut).scalar_subquery()
        with self.db.begin() as conn:
            conn.execute(
                a.update()
                .where(a.c.rollout_id == r["id"], a.c.status.in_(waiting), a.c.sent_at < off_cut, a.c.device_id.in_(offline))
                .values(status=A.TIMED_OUT.value, updated_at=now, detail=f"offline for more than {self.config.offline_timeout_s:.0f}s")
            )
            conn.execute(
                a.update()
                .where(a.c.rollout_id == r["id"], a.c.status.in_(waiting), a.c.sent_at < now - self.config.assignment_timeout_s)
                .values(status=A.TIMED_OUT.value, updated_at=now, detail=f"no final report within {self.config.assignment_timeout_s:.0f}s")
            )

    # -- publishing ------------------------------------------------------------------------
    def publish_pending(self, rollout_id: str, chunk: int = 5000) -> int:
        """Publish assign commands still ``pending`` and rollback orders not yet sent; marks them sent once acknowledged."""
        if self.sender is None:
            return 0
        a = self.db.t.assignments
        sent = 0
        with self.db.connect() as conn:
            r = load_rollout(self.db, conn, rollout_id)
            rows = conn.execute(sa.select(a).where(a.c.rollout_id == rollout_id, a.c.status == A.PENDING.value)).all()
            rb_rows = conn.execute(sa.select(a).where(a.c.rollout_id == rollout_id, a.c.status == A.REVERTING.value, a.c.rollback_sent_at.is_(None))).all()
        for i in range(0, len(rows), chunk):
            part = [row._mapping for row in rows[i : i + chunk]]
            cmds = [assign_command(m["device_id"], m["command_id"], m["seq"], m["expires"], r) for m in part]
            acked = self.sender.send(cmds)
            if acked:
                now = self.clock()
                with self.db.begin() as conn:
                    conn.execute(
                        a.update().where(a.c.command_id == sa.bindparam("b_cid"), a.c.status == A.PENDING.value).values(status=A.SENT.value, sent_at=now, updated_at=now),
                        [{"b_cid": c.command_id} for c in acked],
                    )
                sent += len(acked)
        if rb_rows:
            targets = self._targets()
            for i in range(0, len(rb_rows), chunk):
                part = [row._mapping for row in rb_rows[i : i + chunk]]
                cmds = []
                for m in part:
                    prev = targets.get(f"{m['from_name']}/{m['from_version']}/{m['from_name']}-{m['from_version']}.bundle") if m["from_name"] else None
                    cmds.append(rollback_command(m["device_id"], m["rollback_command_id"], m["rollback_seq"], m["rollback_expires"], r, m["from_name"], m["from_version"], prev, f"rollout {rollout_id} aborted: {r['status_reason']}"[:500]))
                acked = self.sender.send(cmds)
                if acked:
                    now = self.clock()
                    with self.db.begin() as conn:
                        conn.execute(
                            a.update().where(a.c.rollback_command_id == sa.bindparam("b_cid")).values(rollback_sent_at=now, updated_at=now),
                            [{"b_cid": c.command_id} for c in acked],
                        )
                    sent += len(acked)
        return sent

    def _targets(self) -> dict:
        if self.repo_dir is None:
            return {}
        try:
            return list_targets(self.repo_dir)
        except Exception:
            return {}

    # -- aborting --------------------------------------------------------------------------
    def _abort(self, r: dict) -> None:
        a = self.db.t.assignments
        now = self.clock()
        with self.db.begin() as conn:
            waves = conn.execute(sa.select(self.db.t.waves).where(self.db.t.waves.c.rollout_id == r["id"])).all()
            for w in waves:
                if w.status == W.PENDING.value:
                    set_wave_status(self.db, conn, r["id"], w.idx, W.PENDING, W.CANCELLED, "rollout aborted", now=now)
                elif w.status in (W.RUNNING.value, W.HALTED.value):
                    set_wave_status(self.db, conn, r["id"], w.idx, w.status, W.FAILED, "rollout aborted", now=now)
            # every device of the rollout not already back gets a signed rollback order
            todo = conn.execute(
                sa.select(a.c.device_id)
                .where(a.c.rollout_id == r["id"], a.c.rollback_command_id.is_(None), a.c.status.not_in(_lit([A.ROLLED_BACK, A.REVERTING, A.REVERTED])), a.c.seq > 0)
                .with_for_update()
            ).all()
            if todo:
                seqs = allocate_seqs(self.db, conn, [row.device_id for row in todo])
                upd = [
                    {"b_dev": dev, "b_cid": f"{r['id']}-{dev}-rollback-{uuid.uuid4().hex[:6]}", "b_seq": seq, "b_exp": now + self.config.command_ttl_s, "b_now": now}
                    for dev, seq in seqs.items()
                ]
                conn.execute(
                    a.update()
                    .where(a.c.rollout_id == r["id"], a.c.device_id == sa.bindparam("b_dev"))
                    .values(status=A.REVERTING.value, rollback_command_id=sa.bindparam("b_cid"), rollback_seq=sa.bindparam("b_seq"), rollback_expires=sa.bindparam("b_exp"), updated_at=sa.bindparam("b_now")),
                    upd,
                )
        self.publish_pending(r["id"])
        with self.db.begin() as conn:
            unsent = conn.execute(sa.select(sa.func.count()).select_from(a).where(a.c.rollout_id == r["id"], a.c.status == A.REVERTING.value, a.c.rollback_sent_at.is_(None))).scalar()
            if unsent == 0 and (self.sender is not None or not todo):
                done = self.clock()
                set_rollout_status(self.db, conn, r["id"], R.ABORTING, R.ABORTED, r["status_reason"] or "aborted", done, finished_at=done)
