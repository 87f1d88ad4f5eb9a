"""The outbox: an on-disk SQLite spool of messages waiting for the broker's PUBACK.

Telemetry batches and events are written here first and deleted only when the broker has
acknowledged them (QoS 1 PUBACK), so nothing is lost across broker outages or agent restarts.
Sequence numbers (one gap-free counter per kind and device) are assigned inside the same
transaction as the insert, so a crash can neither reuse nor skip one.

Bound and drop policy: the spool holds at most ``max_bytes`` of payload. When a new message
would exceed it, the *oldest* messages are dropped first (telemetry before events: an event
is rarer and says more) until it fits. Drops are counted per kind in the ``meta`` table; the
agent reports them in the next batch's ``dropped_batches`` and as a ``telemetry_dropped``
event; the message that reports them resets the count in the same transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

TELEMETRY = "telemetry"
EVENT = "event"


def open_spool_db(path: Path, synchronous: str) -> sqlite3.Connection:
    """An autocommit SQLite connection for an on-disk spool, shared by the agent's threads
    behind the spool's own lock: WAL, the given ``synchronous`` level, a 256 KiB page cache (a
    spool is written and read in order, a few rows at a time: SQLite's default 2 MiB would stay
    resident in the agent)."""
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA cache_size=-256")
    return db


@dataclass(frozen=True)
class SpooledMessage:
    """One message waiting for its PUBACK."""

    id: int
    kind: str
    seq: int
    topic: str
    payload: bytes


class Spool:
    """A bounded SQLite outbox (thread-safe; one connection guarded by a lock)."""

    def __init__(self, path: Path, max_bytes: int):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = open_spool_db(self.path, synchronous="FULL")
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                kind TEXT NOT NULL,
                seq INTEGER NOT NULL,
                topic TEXT NOT NULL,
                payload BLOB NOT NULL,
                size INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
            """
        )

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def next_seq(self, kind: str) -> int:
        """The sequence number the next message of ``kind`` will get."""
        with self._lock:
            return self._meta(f"seq:{kind}")

    def append(self, kind: str, topic: str, build: Callable[[int, dict[str, int]], bytes], report_drops: bool = False) -> int:
        """Assign the next seq of ``kind``, build the payload with it, store it; returns the seq.

        ``build(seq, dropped)`` gets the unreported drop counts per kind; with ``report_drops``
        they are reset in the same transaction (the message being stored reports them).
        Drops the oldest messages first when the bound would be exceeded.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._meta(f"seq:{kind}")
                dropped = {k: self._meta(f"dropped:{k}") for k in (TELEMETRY, EVENT)}
                payload = build(seq, dropped)
                if report_drops:
                    for k in dropped:
                        self._set_meta(f"dropped:{k}", 0)
                self._make_room(len(payload))
                self._db.execute("INSERT INTO outbox(kind, seq, topic, payload, size) VALUES(?, ?, ?, ?, ?)", (kind, seq, topic, payload, len(payload)))
                self._set_meta(f"seq:{kind}", seq + 1)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return seq

    def _make_room(self, incoming: int) -> None:
        used = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0]
        excess = used + incoming - self.max_bytes
        if excess <= 0:
            return
        # Oldest first, telemetry before events.
        for kind in (TELEMETRY, EVENT):
            for row_id, size in self._db.execute("SELECT id, size FROM outbox WHERE kind = ? ORDER BY id", (kind,)).fetchall():
                if excess <= 0:
                    return
                self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                self._set_meta(f"dropped:{kind}", self._meta(f"dropped:{kind}") + 1)
                excess -= size

    def pending(self, limit: int = 100, exclude: set[int] | frozenset[int] = frozenset()) -> list[SpooledMessage]:
        """Oldest messages still waiting, skipping ids in ``exclude`` (in flight)."""
        with self._lock:
            rows = self._db.execute("SELECT id, kind, seq, topic, payload FROM outbox ORDER BY id LIMIT ?", (limit + len(exclude),)).fetchall()
        return [SpooledMessage(int(r[0]), r[1], int(r[2]), r[3], bytes(r[4])) for r in rows if r[0] not in exclude][:limit]

    def ack(self, message_id: int) -> None:
        """Delete a message the broker acknowledged."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (message_id,))

    def count(self) -> int:
        """Messages waiting."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def size_bytes(self) -> int:
        """Payload bytes waiting."""
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()[0])

    def dropped(self, kind: str = TELEMETRY) -> int:
        """Messages of ``kind`` dropped and not yet reported."""
        with self._lock:
            return self._meta(f"dropped:{kind}")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
