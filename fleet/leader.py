"""Leader election for the reconciler: one replica drives rollouts, all replicas ingest and serve.

PostgreSQL: a session-level advisory lock held on one dedicated connection; if that
connection dies the lock is released and another replica takes over on its next attempt.
SQLite: an exclusive ``flock`` on ``<database>.leader`` (replicas on one host only, which is
all SQLite supports anyway).

Replicas starting at once create the schema one after the other inside
:meth:`~edgeops.fleet.db.Database.create_all` (an advisory lock of its own).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import sqlalchemy as sa

from edgeops.fleet.db import Database

log = logging.getLogger("edgeops.fleet.leader")

class LeaderLease:
    """Try to become (and stay) the leader; :meth:`acquire` is cheap to call every tick."""

    def __init__(self, db: Database, lock_id: int):
        self.db = db
        self.lock_id = lock_id
        self._conn = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this process is the leader."""
        return self._conn is not None or self._fd is not None

    def acquire(self) -> bool:
        """Become the leader if nobody is; True when this process is the leader now."""
        if self.db.dialect == "postgresql":
            return self._acquire_pg()
        return self._acquire_file()

    def _acquire_pg(self) -> bool:
        if self._conn is not None:
            try:
                self._conn.execute(sa.text("SELECT 1"))
                self._conn.commit()  # not "idle in transaction" between ticks (idle_in_transaction_session_timeout would cut the lease)
                return True
            except Exception:
                log.warning("lost the leader connection; trying to take the lock again")
                self._close_pg()
        conn = self.db.engine.connect()
        try:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.lock_id}).scalar()
            conn.commit()
        except Exception:
            conn.close()
            return False
        if got:
            self._conn = conn
            return True
        conn.close()
        return False

    def _close_pg(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.lock_id})
                self._conn.commit()
            except Exception:
                pass
            try:
                self._conn.invalidate()  # never hand a lock-holding connection back to the pool
            except Exception:
                pass
            self._conn = None

    def _lock_path(self) -> Path:
        db = self.db.engine.url.database
        if not db or db == ":memory:":
            return Path(f"/tmp/edgeops-fleet-{os.getuid()}-memory.leader")
        return Path(db + ".leader")

    def _acquire_file(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self._lock_path(), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Give up leadership."""
        self._close_pg()
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
