"""The rollout reconciler: a periodic loop that dispatches on each live rollout's status.

Per tick and rollout (everything it decides is written to the database before it acts, so a
console restarted at any point continues from the rows, never re-assigning a device):

- ``running``: publish commands still ``pending``; time out devices that went offline or never
  reported; start the first wave if none started; evaluate the current wave's gates (PASS ->
  the wave passes and the next starts, or the rollout waits for approval, or finishes; FAIL ->
  the wave halts and the rollout pauses or aborts, per ``on_gate_failure``); top up the last
  wave with devices that started to match the selector since it began.
- ``paused`` / ``waiting_approval``: publish what was already decided; apply timeouts.
- ``watching`` (``--watch``, after the last wave passed): failure and rollback rates over every
  device of the rollout; a late failure orders the devices that reported it back (the others
  stay) and pauses the rollout with the reason; the end finishes.
- ``aborting``: cancel pending waves, order every device of the rollout back to the version it
  ran before (signed rollback commands), then ``aborted``.

Device selection for a wave: every enrolled device matching the selector, ordered by
sha256(rollout id + device id) (deterministic, unbiased by naming) within its stratum (profile,
and the rollout's ``strata_tag``) and interleaved so every wave draws each stratum in
proportion (:func:`stratified_order`), minus devices already in this rollout and devices busy
in another live rollout; the wave takes devices until the rollout covers
``ceil(percent * matching)``, less the control held back (:func:`held_back`) until the last
wave is judged. Devices that enrol later are counted when the next
wave starts, so they join it.

Waves are numbered from 1 in every text a person reads (reasons, audit actions, logs); the
``idx`` columns and API fields stay 0-based.

Each tick reads the live rollouts once, as typed records (:mod:`~edgeops.fleet.rollouts.records`,
built by :mod:`~edgeops.fleet.rollouts.queries`); each running wave is assessed from a typed
copy (counts, then the inputs its configured gates declare), and what the assessment decides
(gate verdicts; the wave passed or halted; the rollout finished, waiting, paused or aborting;
the next wave started with its devices) is written in one transaction. Every time written
comes from the reconciler's ``clock``, passed as ``now``.

Cost per tick, so a 10,000-device rollout does not pay O(devices) every second:

- gate inputs from telemetry (new-version aggregates, per-device values of the wave and the
  control) are queried only when a gate that reads them is configured (``reads`` of
  :func:`~edgeops.fleet.rollouts.gates.gate`); the selection and published versions the control
  is drawn from at most every ``COHORT_TTL_S``;
- timeouts are applied at most every ``EXPIRE_EVERY_S`` per rollout (they are minutes long);
- the last wave's top-up (which reads every device row) runs when the device table changed
  (a new enrolment: count or newest ``enrolled_at``), or every ``TOPUP_EVERY_S`` (catches tag
  or profile edits of enrolled devices, and devices freed by another rollout).
"""

from __future__ import annotations

import dataclasses
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
from edgeops.fleet.db import Database, dumps
from edgeops.fleet.rollouts import gates as gates_mod, queries, windows
from edgeops.fleet.rollouts.inputs import COHORT_TTL_S, WaveSource  # noqa: F401  (re-exported)
from edgeops.fleet.rollouts.records import Rollout, Wave
from edgeops.fleet.rollouts.settings import RolloutSettings
from edgeops.fleet.rollouts.service import set_rollout_status, set_wave_status
from edgeops.fleet.rollouts.status import FAILED_ASSIGNMENT, IN_FLIGHT_ASSIGNMENT, LIVE_ROLLOUT, AssignmentStatus as A, RolloutStatus as R, WaveStatus as W, wave_label
from edgeops.fleet.targets import list_targets, version_targets
from edgeops.trust.targets import target_path

log = logging.getLogger("edgeops.fleet.reconciler")

WINDOW_WAIT = windows.WINDOW_WAIT
EXPIRE_EVERY_S = 5.0  # timeouts are checked at most this often per rollout (reconciler clock)
TOPUP_EVERY_S = 10.0  # the last wave re-reads every device at least this often (tag edits)


def selection_order(rollout_id: str, device_id: str) -> str:
    """Deterministic position of a device in a rollout's selection order."""
    return hashlib.sha256(f"{rollout_id}:{device_id}".encode()).hexdigest()


def stratified_order(rollout_id: str, devices: list[tuple[str, str | None, str | None]], strata_tag: str | None) -> dict[str, tuple[float, str]]:
    """Sort keys that draw every wave proportionally from each stratum (profile, and the
    ``strata_tag`` value): a device's key is its position within its stratum (in
    :func:`selection_order`) as a fraction of the stratum's size, so the first k devices of the
    order hold about k x (stratum share) of each stratum. ``devices``: (id, profile, tags JSON)
    of every matching device, so the order does not change from wave to wave."""
    strata: dict[str, list[str]] = {}
    for device_id, profile, tags in devices:
        key = queries.stratum(profile, json.loads(tags or "{}"), strata_tag)
        strata.setdefault(key, []).append(device_id)
    out: dict[str, tuple[float, str]] = {}
    for ids in strata.values():
        ranked = sorted(ids, key=lambda d: selection_order(rollout_id, d))
        for rank, device_id in enumerate(ranked):
            out[device_id] = ((rank + 0.5) / len(ranked), selection_order(rollout_id, device_id))
    return out


WATCH_GATES = ("max_failure_rate", "max_rollback_rate")  # judged over every device of the rollout while watching
LATE_FAILURE = "late failure during the watch"  # reason prefix, and the detail of the devices it rolled back


def _names(devices: list[str], most: int = 20) -> str:
    """Device ids for a reason: the first ``most``, then how many more."""
    return ", ".join(devices[:most]) + (f" and {len(devices) - most} more" if len(devices) > most else "")
# the gates that compare with a control cohort
CONTROL_GATES = ("max_latency_regression", "max_error_rate", "max_latency_p50_regression", "max_confidence_drop", "max_class_mix_shift")


def needs_control(settings: RolloutSettings) -> bool:
    """True when a configured gate compares the wave with a control cohort."""
    return any(getattr(settings, g) is not None for g in CONTROL_GATES)


def held_back(settings: RolloutSettings, matching: int) -> int:
    """Devices of the selection kept on the old version as the control until the last wave is
    judged: ``control_share`` of it, at least ``judge_min_devices``, at most half (0 when no
    configured gate needs a control, or ``control_share`` is 0)."""
    if not needs_control(settings) or settings.control_share <= 0 or matching <= 1:
        return 0
    want = max(math.ceil(settings.control_share * matching - 1e-9), settings.judge_min_devices)
    return min(want, matching // 2)


def control_released(verdicts: list[dict]) -> bool:
    """True once every stored control-comparing verdict of the wave is a final pass."""
    judged = [v for v in verdicts if isinstance(v, dict) and v.get("gate") in CONTROL_GATES]
    return bool(judged) and all(v.get("final") and v.get("outcome") == gates_mod.Outcome.PASS.value for v in judged)


def halt_reason(idx: int, failed: list[gates_mod.Verdict]) -> str:
    """Why a wave halted, naming each failed gate with what it measured against which threshold."""
    return f"{wave_label(idx)} halted: " + "; ".join(
        f"{v.gate} {v.measured:.4g} vs {v.threshold:.4g} ({v.detail})" if v.measured is not None and v.threshold is not None else f"{v.gate} ({v.detail})" for v in failed
    )


def previous_target(targets: dict, name: str | None, version: str | None, profile: str | None):
    """The signed target of the version a device ran before (``name@version``), built for its
    profile when the version is published per profile; None when not published."""
    if not name or not version:
        return None
    found = version_targets(targets, name, version)
    if profile in found:
        return found[profile]
    return targets.get(target_path(name, version))


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
        self._memo: dict[str, dict] = {}  # rollout -> WaveSource.memo (the cached selection)

    # -- loop ------------------------------------------------------------------------------
    def tick(self) -> None:
        """Reconcile every live rollout once (each read once); errors are logged per rollout, never raised."""
        with self.db.connect() as conn:
            rollouts = queries.live_rollouts(self.db, conn)
        ids = {r.id for r in rollouts}
        for memo in (self._expired_at, self._topup, self._memo):
            for gone in set(memo) - ids:
                memo.pop(gone, None)
        for r in rollouts:
            try:
                self.reconcile(r)
            except IllegalTransitionError as e:
                # an operator (or another replica) changed the rollout between our read and write
                log.info("rollout %s: %s; retrying next tick", r.id, e)
            except Exception:
                log.exception("rollout %s: reconcile failed; retrying next tick", r.id)

    def reconcile(self, rollout: Rollout | str) -> None:
        """One step for one rollout (a typed copy, or its id to read it), dispatched on its status."""
        r = self._rollout(rollout)
        if r.status is R.ABORTING:
            self._abort(r)
            return
        if r.status not in LIVE_ROLLOUT:
            return
        self._expire(r)
        self.publish_pending(r)
        if r.status is R.RUNNING:
            self._advance(r)
        elif r.status is R.WATCHING:
            self._watch(r)

    def _rollout(self, rollout: Rollout | str) -> Rollout:
        if isinstance(rollout, Rollout):
            return rollout
        with self.db.connect() as conn:
            return queries.load_rollout(self.db, conn, rollout)

    # -- running ---------------------------------------------------------------------------
    def _advance(self, r: Rollout) -> None:
        now = self.clock()
        if r.current_wave < 0:
            self._start_wave(r, 0, now)
            return
        with self.db.connect() as conn:
            wave = queries.load_wave(self.db, conn, r.id, r.current_wave)
        if wave is None:
            return
        last = wave.idx == r.last_wave
        if wave.status is W.PASSED:
            if last:
                with self.db.begin() as conn:
                    self._finish_or_watch(conn, r, now)
            else:
                self._start_wave(r, wave.idx + 1, now)
            return
        if wave.status is not W.RUNNING:
            return
        if last and self._topup_due(r.id, now):
            # devices that started to match since the last wave began join it
            with self.db.begin() as conn:
                added = self._assign(conn, r, wave.idx, now, release=control_released(wave.gates))
            if added:
                self.publish_pending(r)
        self._assess(r, wave, now)

    def _assess(self, r: Rollout, wave: Wave, now: float) -> None:
        """Evaluate the wave's gates and write what they decide, once (one transaction)."""
        idx, last, settings = wave.idx, wave.idx == r.last_wave, r.settings
        outcome, verdicts = gates_mod.evaluate(self.wave_stats(r, wave), settings)
        vdicts = [v.to_dict() for v in verdicts]
        if self.on_verdicts:
            self.on_verdicts(r.id, idx, vdicts)
        started = aborting = released = False
        reason = ""
        w = self.db.t.waves
        with self.db.begin() as conn:
            if outcome is gates_mod.Outcome.PASS and last and needs_control(settings):
                # the control held back has done its job: the judged verdicts become final and
                # the held-back devices join the last wave, which passes once they report (the
                # next PASS finds none left to add and finishes)
                for v in vdicts:
                    if v["gate"] in CONTROL_GATES:
                        v["final"] = True
                released = self._assign(conn, r, idx, now, release=True) > 0
            if outcome is gates_mod.Outcome.WAIT or released:
                conn.execute(w.update().where(w.c.rollout_id == r.id, w.c.idx == idx).values(gates=dumps(vdicts)))
            elif outcome is gates_mod.Outcome.INCONCLUSIVE:
                # too little data for too long: never a pass, never an abort; an operator decides
                stuck = [v for v in verdicts if v.outcome is gates_mod.Outcome.INCONCLUSIVE]
                reason = f"{wave_label(idx)} inconclusive: " + "; ".join(f"{v.gate} ({v.detail})" for v in stuck)
                set_wave_status(self.db, conn, r.id, idx, W.RUNNING, W.HALTED, reason, vdicts, now=now)
                set_rollout_status(self.db, conn, r.id, R.RUNNING, R.PAUSED, reason, now)
            elif outcome is gates_mod.Outcome.PASS:
                set_wave_status(self.db, conn, r.id, idx, W.RUNNING, W.PASSED, "all gates passed", vdicts, now=now)
                if last:
                    self._finish_or_watch(conn, r, now)
                elif settings.approve_each_wave:
                    set_rollout_status(self.db, conn, r.id, R.RUNNING, R.WAITING_APPROVAL, f"{wave_label(idx)} passed; promote to start {wave_label(idx + 1)}", now)
                else:
                    started = self._begin_wave(conn, r, idx + 1, now) is not None
            else:
                reason = halt_reason(idx, [v for v in verdicts if v.outcome is gates_mod.Outcome.FAIL])
                aborting = settings.on_gate_failure == "abort"
                set_wave_status(self.db, conn, r.id, idx, W.RUNNING, W.HALTED, reason, vdicts, now=now)
                set_rollout_status(self.db, conn, r.id, R.RUNNING, R.ABORTING if aborting else R.PAUSED, reason, now)
        if started:
            self._wave_started(r, idx + 1, now)
        if released:
            log.info("rollout %s: %s judged; the held-back control joins it", r.id, wave_label(idx))
            self.publish_pending(r)
        if outcome is gates_mod.Outcome.INCONCLUSIVE:
            log.warning("rollout %s: %s -> paused", r.id, reason)
        if outcome is gates_mod.Outcome.FAIL:
            log.warning("rollout %s: %s -> %s", r.id, reason, "aborting" if aborting else "paused")
        if aborting:
            self._abort(dataclasses.replace(r, status=R.ABORTING, status_reason=reason[:4000]))

    # -- watching (after the last wave) ---------------------------------------------------
    def _finish_or_watch(self, conn: Connection, r: Rollout, now: float) -> None:
        """The last wave passed: finished, or watching for ``watch_s`` first."""
        if r.settings.watch_s > 0:
            until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now + r.settings.watch_s))
            set_rollout_status(self.db, conn, r.id, R.RUNNING, R.WATCHING, f"last wave passed; watching until {until}", now)
        else:
            set_rollout_status(self.db, conn, r.id, R.RUNNING, R.FINISHED, "last wave passed", now, finished_at=now)

    def _watch(self, r: Rollout) -> None:
        """Judge the whole rollout for ``watch_s`` after its last wave passed (hawkBit's pause
        after install): a device that fails or rolls itself back late counts against
        max_failure_rate / max_rollback_rate over every device of the rollout. Past a threshold
        the devices that reported a failure during the watch are the affected ones: each not
        already back gets a signed rollback order, each gets the reason in its detail, and the
        rollout pauses saying which devices and why; the other devices stay on the new version
        (abort rolls them back too; resume watches again, not counting the failures handled).
        The end of the watch finishes the rollout."""
        now = self.clock()
        a = self.db.t.assignments
        with self.db.connect() as conn:
            last = queries.load_wave(self.db, conn, r.id, r.last_wave)
            counts = queries.rollout_counts(self.db, conn, r.id)
            handled = queries.late_failures_handled(self.db, conn, r.id, LATE_FAILURE)
        # a resumed watch starts when the rollout went back to watching (updated_at)
        began = max(last.finished_at if last and last.finished_at is not None else now, r.updated_at if r.updated_at <= now else now)
        unhandled = {k: v - handled.get(k, 0) for k, v in counts.items()}
        stats = gates_mod.WaveStats(size=sum(counts.values()), counts=unhandled, started_at=began, now=now)
        verdicts = [v for name in WATCH_GATES if (v := gates_mod.GATES[name](stats, r.settings)) is not None]
        failed = [v for v in verdicts if v.outcome is gates_mod.Outcome.FAIL]
        if failed:
            why = halt_reason(r.last_wave, failed).split(" halted: ", 1)[1]
            first_began = last.finished_at if last and last.finished_at is not None else began
            with self.db.begin() as conn:
                late = conn.execute(
                    sa.select(a.c.device_id, a.c.status, a.c.detail, a.c.seq)
                    .where(a.c.rollout_id == r.id, a.c.status.in_(queries.literal_statuses(FAILED_ASSIGNMENT)), a.c.updated_at >= first_began, sa.not_(a.c.detail.like(LATE_FAILURE + "%")))
                    .order_by(a.c.device_id)
                    .with_for_update()
                ).all()
                order = [row.device_id for row in late if row.status != A.ROLLED_BACK.value and row.seq > 0]
                back = [row.device_id for row in late if row.device_id not in order]
                seqs = allocate_seqs(self.db, conn, order) if order else {}
                for row in late:
                    values: dict = {"detail": f"{LATE_FAILURE}: {why} ({row.detail or row.status})"[:4000], "updated_at": now}
                    if row.device_id in seqs:
                        values.update(status=A.REVERTING.value, rollback_command_id=f"{r.id}-{row.device_id}-rollback-{uuid.uuid4().hex[:6]}", rollback_seq=seqs[row.device_id], rollback_expires=now + self.config.command_ttl_s)
                    conn.execute(a.update().where(a.c.rollout_id == r.id, a.c.device_id == row.device_id).values(**values))
                stay = sum(counts.values()) - len(late) - sum(handled.values())
                reason = (
                    f"{LATE_FAILURE}: {why}; "
                    + (f"ordered back: {_names(order)}; " if order else "")
                    + (f"already back by themselves: {_names(back)}; " if back else "")
                    + f"the other {max(0, stay)} devices stay on {r.bundle_version} (abort rolls them back too, resume watches again)"
                )
                set_rollout_status(self.db, conn, r.id, R.WATCHING, R.PAUSED, reason, now)
            log.warning("rollout %s: %s", r.id, reason)
            self.publish_pending(r)
        elif now - began >= r.settings.watch_s:
            with self.db.begin() as conn:
                set_rollout_status(self.db, conn, r.id, R.WATCHING, R.FINISHED, f"watched {r.settings.watch_s:.0f}s after the last wave without a failure", now, finished_at=now)

    def _start_wave(self, r: Rollout, idx: int, now: float) -> None:
        with self.db.begin() as conn:
            if self._begin_wave(conn, r, idx, now) is None:
                return
        self._wave_started(r, idx, now)

    def _begin_wave(self, conn: Connection, r: Rollout, idx: int, now: float) -> int | None:
        """Start wave ``idx`` in ``conn``: the number of devices it took, None if another replica started it."""
        t = self.db.t.rollouts
        # compare-and-set on (status, current_wave): one replica, one start
        res = conn.execute(t.update().where(t.c.id == r.id, t.c.status == R.RUNNING.value, t.c.current_wave == idx - 1).values(current_wave=idx, updated_at=now))
        if res.rowcount != 1:
            return None
        set_wave_status(self.db, conn, r.id, idx, W.PENDING, W.RUNNING, f"{r.settings.waves[idx]:g}% of the selection", now=now)
        n = self._assign(conn, r, idx, now)
        log.info("rollout %s: %s started with %d devices", r.id, wave_label(idx), n)
        return n

    def _wave_started(self, r: Rollout, idx: int, now: float) -> None:
        if idx == r.last_wave:
            self._topup[r.id] = (self._device_signature(), now)  # _assign just read every device
        self.publish_pending(r)

    def _device_signature(self) -> tuple:
        with self.db.connect() as conn:
            return queries.device_signature(self.db, conn)

    def _topup_due(self, rollout_id: str, now: float) -> bool:
        """True when the last wave should look for newly matching devices (see module doc)."""
        sig = self._device_signature()
        last = self._topup.get(rollout_id)
        if last is not None and last[0] == sig and now - last[1] < TOPUP_EVERY_S:
            return False
        self._topup[rollout_id] = (sig, now)
        return True

    def _assign(self, conn: Connection, r: Rollout, idx: int, now: float, release: bool = False) -> int:
        """Create assignments (and per-device seqs) so the rollout covers wave ``idx``'s percent of the selection.

        Until ``release``, the control share (:func:`held_back`) stays out of the rollout.
        """
        # devices whose profile has no target of the version are left out (resolution: never
        # assigned a bundle they would refuse); the wave's share counts the ones it can reach
        matching = [row for row in queries.matching_devices_for_update(self.db, conn, r.settings.selector) if r.targets.resolve(row.profile) is not None]
        assigned = queries.devices_in_rollout(self.db, conn, r.id)
        busy = queries.devices_busy_elsewhere(self.db, conn, r.id)
        target = math.ceil(r.settings.waves[idx] / 100.0 * len(matching) - 1e-9)
        if not release:
            target = min(target, len(matching) - held_back(r.settings, len(matching)))
        need = target - len(assigned)
        if need <= 0:
            return 0
        order = stratified_order(r.id, [(row.id, row.profile, row.tags) for row in matching], r.settings.strata_tag)
        candidates = sorted((row for row in matching if row.id not in assigned and row.id not in busy), key=lambda row: order[row.id])[:need]
        if not candidates:
            return 0

        def on_target(row) -> bool:
            return row.active_name == r.bundle_name and row.active_version == r.bundle_version

        seqs = allocate_seqs(self.db, conn, [row.id for row in candidates if not on_target(row)])
        expires = now + self.config.command_ttl_s
        rows = []
        for row in candidates:
            done = on_target(row)
            rows.append(
                {
                    "rollout_id": r.id,
                    "device_id": row.id,
                    "wave_idx": idx,
                    "bundle_name": r.bundle_name,
                    "bundle_version": r.bundle_version,
                    "target_name": r.targets.resolve(row.profile).name,  # type: ignore[union-attr]  (matching holds only resolvable ones)
                    "command_id": f"{r.id}-{row.id}-{uuid.uuid4().hex[:8]}",
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
        conn.execute(self.db.t.assignments.insert(), rows)
        return len(rows)

    # -- gates input -----------------------------------------------------------------------
    def wave_stats(self, r: Rollout, wave: Wave, settings=None) -> gates_mod.WaveStats:
        """A typed copy of one wave for the gates: counts and times, plus the inputs the gates
        configured for the rollout declare (``reads``); nothing else is read.

        ``settings`` (default the rollout's) decides which gates are configured.
        """
        settings = settings or r.settings
        now = self.clock()
        started = now if wave.started_at is None else wave.started_at
        fields = {f.name for f in dataclasses.fields(gates_mod.WaveStats)}
        values: dict = {}
        extra: dict = {}
        with self.db.connect() as conn:
            counts = queries.wave_counts(self.db, conn, r.id, wave.idx)
            src = WaveSource(self.db, conn, r, wave, started, now, self._targets, self._memo.setdefault(r.id, {}), self.repo_dir)
            for name in gates_mod.inputs_needed(settings):
                for key, value in gates_mod.INPUTS[name](src).items():
                    (values if key in fields else extra)[key] = value
            held = queries.held_for_window(self.db, conn, r.id, wave.idx, WINDOW_WAIT) if settings.maintenance else 0
        previous = {g["gate"]: g for g in wave.gates if isinstance(g, dict) and "gate" in g}
        return gates_mod.WaveStats(size=sum(counts.values()), counts=counts, started_at=started, now=now, **values, held_for_window=held, previous=previous, extra=extra)

    # -- timeouts --------------------------------------------------------------------------
    def _expire(self, r: Rollout) -> None:
        """Offline past the timeout, or no final report in time: the device counts as failed.

        Checked at most every ``EXPIRE_EVERY_S`` per rollout (the timeouts are minutes long).
        """
        a, d = self.db.t.assignments, self.db.t.devices
        now = self.clock()
        last = self._expired_at.get(r.id)
        if last is not None and 0 <= now - last < EXPIRE_EVERY_S:
            return
        self._expired_at[r.id] = now
        off_cut = now - self.config.offline_timeout_s
        waiting = queries.literal_statuses(set(IN_FLIGHT_ASSIGNMENT) - {A.PENDING})  # pending: never sent, not the device's fault
        offline = sa.select(d.c.id).where(d.c.online.is_(False), sa.func.coalesce(d.c.last_seen, 0.0) < off_cut).scalar_subquery()
        with self.db.begin() as conn:
            conn.execute(
                a.update()
                .where(a.c.rollout_id == r.id, a.c.status.in_(waiting), a.c.sent_at < off_cut, a.c.device_id.in_(offline))
                .values(status=A.TIMED_OUT.value, updated_at=now, detail=f"offline for more than {self.config.offline_timeout_s:.0f}s")
            )
            conn.execute(
                a.update()
                .where(a.c.rollout_id == r.id, a.c.status.in_(waiting), a.c.sent_at < now - self.config.assignment_timeout_s)
                .values(status=A.TIMED_OUT.value, updated_at=now, detail=f"no final report within {self.config.assignment_timeout_s:.0f}s")
            )

    # -- publishing ------------------------------------------------------------------------
    def publish_pending(self, rollout: Rollout | str, chunk: int = 5000) -> int:
        """Publish assign commands still ``pending`` and rollback orders not yet sent; marks them sent once acknowledged."""
        if self.sender is None:
            return 0
        r = self._rollout(rollout)
        a = self.db.t.assignments
        with self.db.connect() as conn:
            rows, rb_rows = queries.unpublished_assignments(self.db, conn, r.id)
        if rows and r.settings.maintenance:
            rows = self._in_window(r, rows)
        sent = 0
        for i in range(0, len(rows), chunk):
            cmds = [assign_command(m["device_id"], m["command_id"], m["seq"], m["expires"], r, r.targets.by_name(m["target_name"])) for m in rows[i : i + chunk]]
            sent += self._send(cmds, a.update().where(a.c.command_id == sa.bindparam("b_cid"), a.c.status == A.PENDING.value), "sent_at", status=A.SENT.value)
        if rb_rows:
            targets = self._targets()
            with self.db.connect() as conn:
                profiles = {dev: p for dev, p, _ in queries.device_profiles_and_tags(self.db, conn, [m["device_id"] for m in rb_rows])}
            for i in range(0, len(rb_rows), chunk):
                cmds = []
                for m in rb_rows[i : i + chunk]:
                    prev = previous_target(targets, m["from_name"], m["from_version"], profiles.get(m["device_id"]))
                    cmds.append(rollback_command(m["device_id"], m["rollback_command_id"], m["rollback_seq"], m["rollback_expires"], r, m["from_name"], m["from_version"], prev, f"rollout {r.id} aborted: {r.status_reason}"[:500]))
                sent += self._send(cmds, a.update().where(a.c.rollback_command_id == sa.bindparam("b_cid")), "rollback_sent_at")
        return sent

    def _in_window(self, r: Rollout, rows: list) -> list:
        """The pending rows whose device may get its command now (its maintenance window is open,
        or no window selects it). Rows that waited get a fresh seq and expiry first (the ones
        allocated when the wave started may be stale: a self-test in between, a day's wait);
        rows that must wait say until when."""
        a = self.db.t.assignments
        now = self.clock()
        with self.db.connect() as conn:
            devices = queries.device_profiles_and_tags(self.db, conn, [m["device_id"] for m in rows])
        closed = windows.devices_outside_window(r.settings.maintenance, devices, now)
        ready = [m for m in rows if m["device_id"] not in closed]
        waited = [m["device_id"] for m in ready if str(m["detail"] or "").startswith(WINDOW_WAIT)]
        newly_held = [m for m in rows if m["device_id"] in closed and not str(m["detail"] or "").startswith(WINDOW_WAIT)]
        with self.db.begin() as conn:
            for m in newly_held:
                nxt = windows.next_opening(r.settings.maintenance, closed[m["device_id"]], now)
                when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(nxt)) if nxt is not None else "not within 8 days"
                conn.execute(a.update().where(a.c.rollout_id == r.id, a.c.device_id == m["device_id"], a.c.status == A.PENDING.value).values(detail=f"{WINDOW_WAIT} (next opens {when})", updated_at=now))
            fresh = allocate_seqs(self.db, conn, waited) if waited else {}
            for device_id, seq in fresh.items():
                conn.execute(
                    a.update().where(a.c.rollout_id == r.id, a.c.device_id == device_id, a.c.status == A.PENDING.value).values(seq=seq, expires=now + self.config.command_ttl_s, detail="", updated_at=now)
                )
        if fresh:
            ready = [dict(m, seq=fresh[m["device_id"]], expires=now + self.config.command_ttl_s) if m["device_id"] in fresh else m for m in ready]
        if newly_held:
            log.info("rollout %s: %d devices wait for their maintenance window", r.id, len(newly_held))
        return ready

    def _send(self, cmds: list, mark, sent_column: str, **values) -> int:
        """Publish ``cmds``; stamp the acknowledged ones (``mark``: an UPDATE keyed by ``b_cid``)."""
        acked = self.sender.send(cmds)
        if acked:
            now = self.clock()
            with self.db.begin() as conn:
                conn.execute(mark.values(**{sent_column: now, "updated_at": now}, **values), [{"b_cid": c.command_id} for c in acked])
        return len(acked)

    def _targets(self) -> dict:
        if self.repo_dir is None:
            return {}
        try:
            return list_targets(self.repo_dir)
        except Exception:
            return {}

    # -- aborting --------------------------------------------------------------------------
    def _abort(self, r: Rollout) -> None:
        a = self.db.t.assignments
        now = self.clock()
        with self.db.begin() as conn:
            for w in queries.load_waves(self.db, conn, r.id):
                if w.status is W.PENDING:
                    set_wave_status(self.db, conn, r.id, w.idx, W.PENDING, W.CANCELLED, "rollout aborted", now=now)
                elif w.status in (W.RUNNING, W.HALTED):
                    set_wave_status(self.db, conn, r.id, w.idx, w.status, W.FAILED, "rollout aborted", now=now)
            # every device of the rollout not already back gets a signed rollback order
            todo = conn.execute(
                sa.select(a.c.device_id)
                .where(a.c.rollout_id == r.id, a.c.rollback_command_id.is_(None), a.c.status.not_in(queries.literal_statuses([A.ROLLED_BACK, A.REVERTING, A.REVERTED])), a.c.seq > 0)
                .with_for_update()
            ).all()
            if todo:
                seqs = allocate_seqs(self.db, conn, [row.device_id for row in todo])
                upd = [
                    {"b_dev": dev, "b_cid": f"{r.id}-{dev}-rollback-{uuid.uuid4().hex[:6]}", "b_seq": seq, "b_exp": now + self.config.command_ttl_s, "b_now": now}
                    for dev, seq in seqs.items()
                ]
                conn.execute(
                    a.update()
                    .where(a.c.rollout_id == r.id, a.c.device_id == sa.bindparam("b_dev"))
                    .values(status=A.REVERTING.value, rollback_command_id=sa.bindparam("b_cid"), rollback_seq=sa.bindparam("b_seq"), rollback_expires=sa.bindparam("b_exp"), updated_at=sa.bindparam("b_now")),
                    upd,
                )
        self.publish_pending(r)
        with self.db.begin() as conn:
            unsent = conn.execute(sa.select(sa.func.count()).select_from(a).where(a.c.rollout_id == r.id, a.c.status == A.REVERTING.value, a.c.rollback_sent_at.is_(None))).scalar()
            if unsent == 0 and (self.sender is not None or not todo):
                done = self.clock()
                set_rollout_status(self.db, conn, r.id, R.ABORTING, R.ABORTED, r.status_reason or "aborted", done, finished_at=done)
