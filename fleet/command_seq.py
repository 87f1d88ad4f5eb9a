"""The one allocator of per-device command sequence numbers (``devices.cmd_seq``).

A device refuses a command whose ``seq`` is not above the last one it accepted (replay
protection, see :mod:`edgeops.trust.commands`), so two commands for one device must never
carry the same number and a new number must be above both the console's counter and the last
seq the device reported (``reported_cmd_seq``: a device restored from a backup, or a console
database restored to an older state, must still get numbers it accepts).

Every command that carries a seq (rollout assignments, abort rollback orders, one-off
``self_test`` orders) takes it from :func:`allocate_seqs`, inside the transaction that records
the command. The allocation is one ``UPDATE .. SET cmd_seq = max(cmd_seq, reported_cmd_seq) + 1
.. RETURNING``: PostgreSQL holds the row lock until the transaction ends (a concurrent
allocation for the same device waits, then computes from the committed value), SQLite's write
transaction (``BEGIN IMMEDIATE`` in :meth:`Database.begin`) holds the file lock. No number is
ever read in one statement and written in another.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgeops.fleet.db import Database

CHUNK = 500  # device ids per statement (SQLite's bound-parameter limit, short PostgreSQL statements)


def allocate_seqs(db: Database, conn: Connection, device_ids: Iterable[str]) -> dict[str, int]:
    """Give each device its next command sequence number; ``{device_id: seq}``.

    ``conn`` must be a write transaction (``db.begin()``) that also records the commands, so a
    rolled-back transaction gives the numbers back. Unknown device ids are left out of the
    answer. Ids are locked in sorted order, so two allocations over overlapping devices cannot
    deadlock on PostgreSQL.
    """
    d = db.t.devices
    current = sa.func.coalesce(d.c.cmd_seq, 0)
    reported = sa.func.coalesce(d.c.reported_cmd_seq, 0)
    higher = sa.case((current >= reported, current), else_=reported)
    ids = sorted(set(device_ids))
    out: dict[str, int] = {}
    for i in range(0, len(ids), CHUNK):
        part = ids[i : i + CHUNK]
        # lock first, in id order (an UPDATE's own locking order is its scan's); SQLite ignores FOR UPDATE
        conn.execute(sa.select(d.c.id).where(d.c.id.in_(part)).order_by(d.c.id).with_for_update()).all()
        stmt = d.update().where(d.c.id.in_(part)).values(cmd_seq=higher + 1).returning(d.c.id, d.c.cmd_seq)
        out.update({device_id: int(seq) for device_id, seq in conn.execute(stmt)})
    return out


def allocate_seq(db: Database, conn: Connection, device_id: str) -> int | None:
    """The next command sequence number of one device (None when it is not enrolled)."""
    return allocate_seqs(db, conn, [device_id]).get(device_id)
