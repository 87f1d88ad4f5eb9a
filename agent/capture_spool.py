"""The capture spool: sealed samples waiting for the console's "stored" answer, on disk (SQLite).

Like the telemetry outbox (:mod:`edgeops.agent.spool`) the spool is bounded: it holds at most
``max_bytes`` of sealed samples, and a sample that would exceed the bound makes room by
dropping the *oldest* samples first (the newest show what the device sees now). Drops are
counted in the ``meta`` table until reported (the next telemetry batch's ``capture_dropped``
and a ``capture_dropped`` event), so a restart neither loses nor repeats the count.

The policy's per-day byte budget is kept here too (``day`` = UTC day number, ``day_bytes``):
it survives restarts, so restarting the agent never refills the budget.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from edgeops.agent.spool import open_spool_db


@dataclass(frozen=True)
class SpooledSample:
    """One sealed sample waiting for the console."""

    id: int
    sample_id: str
    blob: bytes


class CaptureSpool:
    """A bounded SQLite spool of sealed samples (thread-safe; one connection behind a lock)."""

    def __init__(self, path: Path, max_bytes: int):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # NORMAL: a sample lost in a power cut is one sample; telemetry's spool stays FULL
        self._db = open_spool_db(self.path, synchronous="NORMAL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS samples (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                sample_id TEXT NOT NULL UNIQUE,
                blob BLOB NOT NULL,
                size INTEGER NOT NULL,
                created_at REAL NOT NULL
            );
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            """
        )
        # samples waiting, kept in memory so the uploader's pump (every network loop, 20 a
        # second) costs no query while the spool is empty, which is nearly always
        self.waiting = int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def budget_left(self, day: int, budget: int) -> int:
        """Bytes the daily ``budget`` still allows on UTC day number ``day``."""
        with self._lock:
            used = self._meta("day_bytes") if self._meta("day") == day else 0
        return budget - used

    def append(self, sample_id: str, blob: bytes, now: float, day: int, budget: int) -> bool:
        """Store a sealed sample, charging it to ``day``'s budget; False (nothing stored) when the
        budget cannot take it. Drops the oldest samples when the spool bound would be exceeded
        (a sample larger than the whole bound is not stored and counts as one drop)."""
        size = len(blob)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                used = self._meta("day_bytes") if self._meta("day") == day else 0
                if used + size > budget:
                    self._db.execute("ROLLBACK")
                    return False
                self._set_meta("day", day)
                self._set_meta("day_bytes", used + size)
                if size > self.max_bytes:
                    self._set_meta("dropped", self._meta("dropped") + 1)
                else:
                    self._make_room(size)
                    self._db.execute("INSERT OR IGNORE INTO samples(sample_id, blob, size, created_at) VALUES(?, ?, ?, ?)", (sample_id, blob, size, now))
                self._db.execute("COMMIT")
                self.waiting = int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return True

    def _make_room(self, incoming: int) -> None:
        used = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM samples").fetchone()[0]
        excess = used + incoming - self.max_bytes
        if excess <= 0:
            return
        dropped = 0
        for row_id, size in self._db.execute("SELECT id, size FROM samples ORDER BY id").fetchall():
            if excess <= 0:
                break
            self._db.execute("DELETE FROM samples WHERE id = ?", (row_id,))
            dropped += 1
            excess -= size
        self._set_meta("dropped", self._meta("dropped") + dropped)

    def oldest(self, limit: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[SpooledSample]:
        """The oldest samples waiting, skipping ``exclude`` (being uploaded)."""
        with self._lock:
            rows = self._db.execute("SELECT id, sample_id, blob FROM samples ORDER BY id LIMIT ?", (limit + len(exclude),)).fetchall()
        return [SpooledSample(int(r[0]), r[1], bytes(r[2])) for r in rows if r[1] not in exclude][:limit]

    def get(self, sample_id: str) -> bytes | None:
        """A waiting sample's sealed bytes (None when it was stored or dropped meanwhile)."""
        with self._lock:
            row = self._db.execute("SELECT blob FROM samples WHERE sample_id = ?", (sample_id,)).fetchone()
        return bytes(row[0]) if row else None

    def remove(self, sample_id: str) -> bool:
        """Delete a sample (the console stored it, or refused it for good); True when it was here."""
        with self._lock:
            removed = self._db.execute("DELETE FROM samples WHERE sample_id = ?", (sample_id,)).rowcount > 0
            self.waiting -= int(removed)
            return removed

    def take_dropped(self) -> int:
        """Drops since the last call (reported once: the count is reset)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            n = self._meta("dropped")
            self._set_meta("dropped", 0)
            self._db.execute("COMMIT")
        return n

    def dropped(self) -> int:
        """Drops not yet reported."""
        with self._lock:
            return self._meta("dropped")

    def count(self) -> int:
        """Samples waiting."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def size_bytes(self) -> int:
        """Sealed bytes waiting."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM samples").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
