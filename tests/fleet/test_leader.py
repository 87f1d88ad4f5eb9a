"""One reconciler leader per database: PostgreSQL advisory lock, SQLite file lock."""

from __future__ import annotations

from edgeops.fleet.db import Database
from edgeops.fleet.leader import LeaderLease


def test_one_leader_at_a_time(db):
    other = Database(db.url, schema=db.schema)
    a, b = LeaderLease(db, 4242), LeaderLease(other, 4242)
    try:
        assert a.acquire() and a.acquire()  # re-entrant for the holder
        assert not b.acquire() and not b.held
        a.release()
        assert b.acquire() and b.held
        assert not a.acquire()
    finally:
        a.release()
        b.release()
        other.dispose()
