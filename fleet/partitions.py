"""Daily PostgreSQL partitions of the telemetry table: created ahead, dropped for retention.

On PostgreSQL the console's ``telemetry`` table can be declaratively partitioned by
``RANGE (received_at)``, one partition per UTC day (``<table>_pYYYYMMDD``). Retention then drops
whole partitions (a catalogue change, no DELETE sweep, no dead rows to vacuum), and the gates'
windows (``received_at >= since``) read only the partitions that overlap them.

What differs from the plain table, and why:

- PostgreSQL cannot enforce a unique key across partitions unless it holds the partition key,
  and ``received_at`` is the console's clock (a redelivery gets a new one). So each partition has
  a UNIQUE index on (device_id, seq): ``ON CONFLICT DO NOTHING`` drops a redelivery received the
  same day, race-free; the ingest insert also skips rows whose (device_id, seq) any partition holds
  (:func:`dedup_clause`), which catches a redelivery on a later day.
- Retention is by whole days: a row lives between ``retention`` and ``retention + 1 day``.
- Indexes follow the gates' queries (fleet/rollouts/queries.py: version and ``received_at >=``;
  fleet/metrics.py: the last 5 minutes by ``received_at``), created on the parent so every
  partition gets them.

The console's leader creates partitions ahead (:data:`AHEAD_DAYS`) and drops expired ones every
hour; every replica also creates them at start-up (``Database.create_all``). A row of no day (no
replica ran for :data:`AHEAD_DAYS` days, a clock far off) lands in the DEFAULT partition rather
than failing ingest; creating its day later moves it out, and retention deletes what stays there
by age. Partition
maintenance takes a transaction-level advisory lock, so replicas starting together do not race.
SQLite keeps its plain table and DELETE retention.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection

DAY_S = 86400
AHEAD_DAYS = 3  # partitions exist this many days past today
BACK_DAYS = 1  # and from yesterday, for rows a test or a tool stamps a little in the past
MODES = ("auto", "daily", "off")
# the insert's duplicate guard looks this far before a batch's own end time (a device clock running
# further ahead than this and a redelivery on another day than the stored copy: stored twice)
DEDUP_CLOCK_AHEAD_S = DAY_S
_LOCK_KEY = 0x6550  # first key of partition maintenance's pg_advisory_xact_lock(int, int)
_BOUND = re.compile(r"FROM \('?([-0-9.e+]+)'?\) TO \('?([-0-9.e+]+)'?\)")


@dataclass(frozen=True)
class Partition:
    """One partition: its table name and its range [lo, hi) of ``received_at``."""

    name: str
    lo: float
    hi: float


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str | None, name: str) -> str:
    """``"schema"."name"`` (or ``"name"`` without a schema)."""
    return f"{_q(schema)}.{_q(name)}" if schema else _q(name)


def day_start(ts: float) -> int:
    """The UTC midnight (unix seconds) of the day holding ``ts``."""
    return int(ts // DAY_S) * DAY_S


def partition_name(table: str, lo: float) -> str:
    """``<table>_pYYYYMMDD`` for the day starting at ``lo``."""
    return f"{table}_p{datetime.fromtimestamp(lo, timezone.utc):%Y%m%d}"


def table_kind(conn: Connection, schema: str | None, table: str) -> str | None:
    """'partitioned', 'plain' or None (no such table)."""
    row = conn.execute(
        sa.text("SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relname = :t AND n.nspname = COALESCE(:s, current_schema())"),
        {"t": table, "s": schema},
    ).first()
    if row is None:
        return None
    return "partitioned" if row[0] == "p" else "plain"


def create_partitioned(conn: Connection, table: sa.Table, schema: str | None, index_prefix: str) -> None:
    """CREATE the parent table (the columns of ``table``, no primary key: see the module doc),
    partitioned by RANGE (received_at), with the gates' indexes on the parent."""
    cols = ", ".join(str(sa.schema.CreateColumn(c).compile(dialect=conn.dialect)) for c in table.columns)
    name = qualified(schema, table.name)
    conn.execute(sa.text(f"CREATE TABLE {name} ({cols}) PARTITION BY RANGE (received_at)"))
    # rollout gates: version equality, then the window on the console's clock
    conn.execute(sa.text(f"CREATE INDEX {_q(index_prefix + 'ix_telemetry_version_recv')} ON {name} (version_name, version_version, received_at)"))
    # /metrics: every version over the last 5 minutes
    conn.execute(sa.text(f"CREATE INDEX {_q(index_prefix + 'ix_telemetry_recv')} ON {name} (received_at)"))
    # rows of no day (a console clock far off, no replica running for AHEAD_DAYS, a test's fake
    # clock) land here instead of failing ingest; ensure_partitions moves a day out when it comes
    default = default_name(table.name)
    conn.execute(sa.text(f"CREATE TABLE {qualified(schema, default)} PARTITION OF {name} DEFAULT"))
    conn.execute(sa.text(f"CREATE UNIQUE INDEX {_q(default + '_key')} ON {qualified(schema, default)} (device_id, seq)"))


def default_name(table: str) -> str:
    """The DEFAULT partition of ``table``."""
    return f"{table}_default"


def list_partitions(conn: Connection, schema: str | None, table: str) -> list[Partition]:
    """The partitions of ``table``, oldest first."""
    rows = conn.execute(
        sa.text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
            "JOIN pg_namespace n ON n.oid = p.relnamespace WHERE p.relname = :t AND n.nspname = COALESCE(:s, current_schema())"
        ),
        {"t": table, "s": schema},
    ).all()
    out = []
    for name, bound in rows:
        m = _BOUND.search(bound or "")
        if m:  # a DEFAULT partition (made by hand) has no range: neither created nor dropped here
            out.append(Partition(name, float(m.group(1)), float(m.group(2))))
    return sorted(out, key=lambda p: p.lo)


def lock(conn: Connection, schema: str | None, table: str) -> None:
    """Partition maintenance of one table, one transaction at a time (replicas starting together).

    A two-key advisory lock: its key space is apart from the leader lease's one-key lock."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k, hashtext(:n))"), {"k": _LOCK_KEY, "n": qualified(schema, table)})


def ensure_partitions(conn: Connection, schema: str | None, table: str, now: float | None = None, ahead_days: int = AHEAD_DAYS, back_days: int = BACK_DAYS, since: float | None = None) -> list[str]:
    """Create the daily partitions missing from ``since`` (default: ``back_days`` before today)
    to ``ahead_days`` after today; returns the names created. Run inside a transaction."""
    lock(conn, schema, table)
    now = time.time() if now is None else now
    first = day_start(since) if since is not None else day_start(now) - back_days * DAY_S
    last = day_start(now) + ahead_days * DAY_S
    have = {p.lo for p in list_partitions(conn, schema, table)}
    default = qualified(schema, default_name(table)) if table_kind(conn, schema, default_name(table)) else None
    created = []
    for lo in range(first, last + 1, DAY_S):
        if float(lo) in have:
            continue
        name = partition_name(table, lo)
        part = qualified(schema, name)
        window = f"received_at >= {lo} AND received_at < {lo + DAY_S}"
        if default and conn.execute(sa.text(f"SELECT 1 FROM {default} WHERE {window} LIMIT 1")).first():
            # the day's rows went to the DEFAULT partition: PostgreSQL refuses a new partition
            # those rows would belong to, so build the day apart, move them, then attach it
            conn.execute(sa.text(f"CREATE TABLE {part} (LIKE {qualified(schema, table)} INCLUDING DEFAULTS)"))
            conn.execute(sa.text(f"WITH moved AS (DELETE FROM {default} WHERE {window} RETURNING *) INSERT INTO {part} SELECT * FROM moved"))
            conn.execute(sa.text(f"ALTER TABLE {qualified(schema, table)} ATTACH PARTITION {part} FOR VALUES FROM ({lo}) TO ({lo + DAY_S})"))
        else:
            conn.execute(sa.text(f"CREATE TABLE {part} PARTITION OF {qualified(schema, table)} FOR VALUES FROM ({lo}) TO ({lo + DAY_S})"))
        # the per-day duplicate key (see the module doc); the parent cannot hold it
        conn.execute(sa.text(f"CREATE UNIQUE INDEX {_q(name + '_key')} ON {part} (device_id, seq)"))
        created.append(name)
    return created


def drop_expired(conn: Connection, schema: str | None, table: str, cutoff: float) -> list[Partition]:
    """DROP every partition whose whole range is older than ``cutoff``; returns them."""
    lock(conn, schema, table)
    dropped = [p for p in list_partitions(conn, schema, table) if p.hi <= cutoff]
    for p in dropped:
        conn.execute(sa.text(f"DROP TABLE {qualified(schema, p.name)}"))
    if table_kind(conn, schema, default_name(table)):  # the few rows of no day: deleted by age
        conn.execute(sa.text(f"DELETE FROM {qualified(schema, default_name(table))} WHERE received_at < :c"), {"c": cutoff})
    return dropped


def dedup_join(schema: str | None, table: str, alias: str) -> tuple[str, str]:
    """(JOIN, WHERE) that keep row ``alias`` only when no partition holds its (device_id, seq): the
    insert's guard against a redelivery received on another day than the stored copy.

    A LATERAL probe with LIMIT 1 stays a nested loop of index lookups (a NOT EXISTS became a hash
    anti join that read every partition whole: 0.7 s per 2,000-row batch over 30 days of 500
    devices). The stored copy came in before this one and no earlier than the batch's own end
    time less :data:`DEDUP_CLOCK_AHEAD_S`, so each probe is pruned at run time to those days."""
    probe = (
        f"LEFT JOIN LATERAL (SELECT 1 AS hit FROM {qualified(schema, table)} o WHERE o.device_id = {alias}.device_id AND o.seq = {alias}.seq "
        f"AND o.received_at >= {alias}.ts_end - {DEDUP_CLOCK_AHEAD_S} AND o.received_at <= {alias}.received_at LIMIT 1) dup ON true"
    )
    return probe, "WHERE dup.hit IS NULL"


@dataclass
class Migration:
    """What :func:`migrate` did."""

    copied: int
    skipped_expired: int
    partitions: list[str]


def migrate(conn: Connection, table: sa.Table, schema: str | None, index_prefix: str, retention_s: float, now: float | None = None) -> Migration:
    """Turn a plain telemetry table into a partitioned one, in the caller's transaction.

    The plain table is renamed aside, the partitioned one created with partitions from the
    oldest retained day to :data:`AHEAD_DAYS` ahead, the rows within ``retention_s`` copied, and
    the old table dropped. It holds an ACCESS EXCLUSIVE lock on the table throughout, so ingest
    waits (and retries) while it runs: run it with the consoles stopped or in a quiet hour."""
    now = time.time() if now is None else now
    name = qualified(schema, table.name)
    old = table.name + "_unpartitioned"
    conn.execute(sa.text(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE"))
    conn.execute(sa.text(f"ALTER TABLE {name} RENAME TO {_q(old)}"))
    # its indexes keep their names (and would collide with the new table's): drop them with it
    for (ix,) in conn.execute(
        sa.text("SELECT indexname FROM pg_indexes WHERE tablename = :t AND schemaname = COALESCE(:s, current_schema())"), {"t": old, "s": schema}
    ).all():
        conn.execute(sa.text(f"ALTER INDEX {qualified(schema, ix)} RENAME TO {_q(ix + '_old')}"))
    create_partitioned(conn, table, schema, index_prefix)
    cutoff = now - retention_s
    oldest = conn.execute(sa.text(f"SELECT min(received_at) FROM {qualified(schema, old)} WHERE received_at >= :c"), {"c": cutoff}).scalar()
    created = ensure_partitions(conn, schema, table.name, now=now, since=min(oldest, now) if oldest is not None else None)
    cols = ", ".join(_q(c.name) for c in table.columns)
    # rows stamped past the last day (a console clock that was ahead) go to the DEFAULT partition
    copied = conn.execute(
        sa.text(f"INSERT INTO {name} ({cols}) SELECT {cols} FROM {qualified(schema, old)} WHERE received_at >= :c ON CONFLICT DO NOTHING"), {"c": cutoff},
    ).rowcount
    total = conn.execute(sa.text(f"SELECT count(*) FROM {qualified(schema, old)}")).scalar()
    conn.execute(sa.text(f"DROP TABLE {qualified(schema, old)}"))
    return Migration(copied=int(copied or 0), skipped_expired=int(total) - int(copied or 0), partitions=created)
