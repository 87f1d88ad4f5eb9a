"""Device reports -> assignment status: the table that moves each device through a rollout.

Each event kind moves an assignment to one status, but only from the statuses listed, so the
order in which redelivered or batched events are applied cannot move a device backwards
(a late ``command_accepted`` never undoes ``succeeded``; a replayed command rejected after the
first copy was accepted changes nothing). Events are matched to assignments by ``command_id``
(the agent echoes it), else by device + bundle version; a ``rolled_back`` event answering an
abort's rollback order turns ``reverting`` into ``reverted``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgeops.fleet.clock import resolve
from edgeops.fleet.db import Database
from edgeops.fleet.rollouts.status import FINAL_ASSIGNMENT, AssignmentStatus as A
from edgeops.protocol import DeviceEvent, DeviceState, EventKind as E

_START = (A.PENDING, A.SENT)
_FLIGHT = (A.PENDING, A.SENT, A.ACCEPTED, A.INSTALLING, A.PROBATION)

# event kind -> (new status, statuses it may move from); applied in this order
EVENT_TRANSITIONS: dict[E, tuple[A, tuple[A, ...]]] = {
    E.COMMAND_ACCEPTED: (A.ACCEPTED, _START),
    E.COMMAND_REJECTED: (A.FAILED, _START),
    E.FETCH_STARTED: (A.INSTALLING, _START + (A.ACCEPTED,)),
    E.INSTALLED: (A.INSTALLING, _START + (A.ACCEPTED,)),
    E.SELF_TEST_PASSED: (A.INSTALLING, _START + (A.ACCEPTED,)),
    E.BUNDLE_REJECTED: (A.FAILED, _START + (A.ACCEPTED, A.INSTALLING)),
    E.INSTALL_FAILED: (A.FAILED, _START + (A.ACCEPTED, A.INSTALLING)),
    E.SELF_TEST_FAILED: (A.FAILED, _START + (A.ACCEPTED, A.INSTALLING)),
    E.ACTIVATED: (A.PROBATION, _START + (A.ACCEPTED, A.INSTALLING)),
    E.PROBATION_PASSED: (A.SUCCEEDED, _FLIGHT),
    E.COMMITTED: (A.SUCCEEDED, _FLIGHT),
    E.PROBATION_FAILED: (A.FAILED, _FLIGHT),
    E.ROLLED_BACK: (A.ROLLED_BACK, _FLIGHT + (A.FAILED, A.SUCCEEDED)),
}

_FAILURE_EVENTS = {E.COMMAND_REJECTED, E.BUNDLE_REJECTED, E.INSTALL_FAILED, E.SELF_TEST_FAILED, E.PROBATION_FAILED}
# Events that can move an assignment to a final status (a wave's gates may decide after them).
FINAL_EVENTS = frozenset(k for k, (new, _) in EVENT_TRANSITIONS.items() if new in FINAL_ASSIGNMENT)


def _in(column, statuses) -> sa.ColumnElement:
    # literal enum values (not bind parameters) so the statement works with executemany
    return column.in_([sa.literal_column(f"'{A(s).value}'") for s in statuses])


def _detail(ev: DeviceEvent) -> str:
    text = ev.detail
    failed = [g for g in ev.gates if not g.passed]
    if failed:
        text = (text + "; " if text else "") + ", ".join(f"{g.gate} {g.measured} vs {g.threshold}" for g in failed)
    return f"{ev.kind.value}: {text}"[:2000] if (text or ev.kind in _FAILURE_EVENTS) else ev.kind.value


@functools.lru_cache(maxsize=256)
def _transition(t: sa.Table, kind: E, match: str) -> sa.Update:
    """The UPDATE moving ``kind``'s assignments on, matched by command id, target or neither.

    Built once per table and kind: at a few events per ingest batch, building the statement cost
    more than running it."""
    new, allowed = EVENT_TRANSITIONS[kind]
    values = {"status": new.value, "updated_at": sa.bindparam("b_now"), "detail": sa.bindparam("b_detail")}
    if match == "command_id":
        where = (t.c.device_id == sa.bindparam("b_dev"), t.c.command_id == sa.bindparam("b_cid"), _in(t.c.status, allowed))
    elif match == "target":
        where = (t.c.device_id == sa.bindparam("b_dev"), t.c.bundle_name == sa.bindparam("b_name"), t.c.bundle_version == sa.bindparam("b_ver"), _in(t.c.status, allowed))
    else:  # a rollback without a command id or target: the device's in-flight assignment
        where = (t.c.device_id == sa.bindparam("b_dev"), _in(t.c.status, _FLIGHT + (A.FAILED,)))
    return t.update().where(*where).values(**values)


@functools.lru_cache(maxsize=16)
def _statements(t: sa.Table) -> dict[str, sa.Update]:
    """The other UPDATEs of this module, built once per assignments table."""
    return {
        # answers to an abort's rollback order
        "reverted_by_command": t.update()
        .where(t.c.device_id == sa.bindparam("b_dev"), t.c.rollback_command_id == sa.bindparam("b_cid"), t.c.status == A.REVERTING.value)
        .values(status=A.REVERTED.value, updated_at=sa.bindparam("b_now"), detail=sa.bindparam("b_detail")),
        "resting_on_target": t.update()
        .where(t.c.device_id == sa.bindparam("b_dev"), t.c.bundle_name == sa.bindparam("b_name"), t.c.bundle_version == sa.bindparam("b_ver"), _in(t.c.status, (A.SENT, A.ACCEPTED)))
        .values(status=A.SUCCEEDED.value, updated_at=sa.bindparam("b_now"), detail="device reports the target version active"),
        "back_on_previous": t.update()
        .where(t.c.device_id == sa.bindparam("b_dev"), t.c.status == A.REVERTING.value, t.c.from_name == sa.bindparam("b_name"), t.c.from_version == sa.bindparam("b_ver"))
        .values(status=A.REVERTED.value, updated_at=sa.bindparam("b_now"), detail="back on the previous version"),
    }


def apply_events(db: Database, conn: Connection, events: Sequence[DeviceEvent], now: float | None = None) -> None:
    """Move assignments forward for newly stored events (already de-duplicated)."""
    now = resolve(now)
    t = db.t.assignments
    by_kind: dict[E, list[DeviceEvent]] = {}
    for ev in events:
        by_kind.setdefault(ev.kind, []).append(ev)
    for kind in EVENT_TRANSITIONS:
        evs = by_kind.get(kind)
        if not evs:
            continue
        with_id = [{"b_dev": e.device_id, "b_cid": e.command_id, "b_detail": _detail(e), "b_now": now} for e in evs if e.command_id]
        with_target = [
            {"b_dev": e.device_id, "b_name": e.target.name, "b_ver": e.target.version, "b_detail": _detail(e), "b_now": now}
            for e in evs
            if not e.command_id and e.target is not None
        ]
        if with_id:
            conn.execute(_transition(t, kind, "command_id"), with_id)
        if with_target:
            conn.execute(_transition(t, kind, "target"), with_target)
        if kind is E.ROLLED_BACK:
            bare = [{"b_dev": e.device_id, "b_detail": _detail(e), "b_now": now} for e in evs if not e.command_id and e.target is None]
            if bare:
                conn.execute(_transition(t, kind, "bare"), bare)
    # answers to an abort's rollback order
    reverted = [{"b_dev": e.device_id, "b_cid": e.command_id, "b_detail": _detail(e), "b_now": now} for e in by_kind.get(E.ROLLED_BACK, []) if e.command_id]
    if reverted:
        conn.execute(_statements(t)["reverted_by_command"], reverted)


RESTING_STATES = ("idle", "committed")


def apply_states(db: Database, conn: Connection, states: Sequence[DeviceState], now: float | None = None) -> None:
    """Device state confirms outcomes events may not spell out.

    - an abort's rollback is confirmed when the device reports its previous version active again;
    - an assignment the device answered with "already active" (no install, so no ``committed``
      event) succeeds when the device rests (idle/committed, nothing pending) on the target.
    """
    now = resolve(now)
    t = db.t.assignments
    rows = [{"b_dev": s.device_id, "b_name": s.active.name, "b_ver": s.active.version, "b_now": now} for s in states if s.active is not None and s.online]
    resting = [r for r, s in zip(rows, [s for s in states if s.active is not None and s.online]) if s.state in RESTING_STATES and s.pending is None]
    if resting:
        conn.execute(_statements(t)["resting_on_target"], resting)
    if rows:
        conn.execute(_statements(t)["back_on_previous"], rows)
