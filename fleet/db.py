"""The console's data layer: one SQLAlchemy Core schema for SQLite and PostgreSQL.

Everything the console knows lives here, so a restarted console (or another replica) resumes
where the last one stopped. Tables (each name gets ``table_prefix``; PostgreSQL may put them in
``schema``)::

    devices       id, tags, profile, active/previous/pending versions, agent state, online,
                  last seen, health, the last command seq the device reported, and ``cmd_seq``:
                  the console's monotonic per-device command counter
    events        device events, primary key (device_id, seq): redeliveries are dropped
    telemetry     one row per telemetry batch, primary key (device_id, seq), with the version
                  it ran and what the gates need (inferences, errors, NaN, p50, p95, agreement)
    rollouts      one per rollout: bundle, TUF target, selector, settings, status, current wave
    waves         (rollout_id, idx): percent, status, timestamps, last gate results
    assignments   (rollout_id, device_id): wave, assign command id/seq/expiry, status, the
                  version the device ran before (for rollback), rollback command id/seq
    audit         rollout history: every status change and operator action
    commands      one-off commands ordered through the API (``self_test`` for ``edgeops hil
                  run --device``): id, device, kind, seq, expiry, bundle, status, timestamps
    device_clock  per device, the messages whose own timestamp was off the console's receive
                  clock (ingest.clock_skew): how many, the last offset and when
    sketches      the drift sketches of a telemetry batch (edgeops.sketch), primary key
                  (device_id, seq) like its batch: the version it ran, rows, and the states as
                  JSON; merged and scored against the bundle's reference by fleet/drift.py

Timestamps are unix seconds (float) and JSON columns are text, so the schema is identical on
both dialects. Writes that arrive in volume (ingest) go through ``executemany``; duplicate
detection uses ``INSERT .. ON CONFLICT DO NOTHING RETURNING`` on both dialects.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgeops.errors import ConfigError, FleetError
from edgeops.fleet import partitions

log = logging.getLogger("edgeops.fleet.db")


def _now() -> float:
    return time.time()


@dataclass
class Tables:
    """The schema's tables, bound to one MetaData (prefix and schema applied)."""

    metadata: sa.MetaData
    devices: sa.Table
    events: sa.Table
    telemetry: sa.Table
    rollouts: sa.Table
    waves: sa.Table
    assignments: sa.Table
    audit: sa.Table
    commands: sa.Table
    device_clock: sa.Table
    sketches: sa.Table


def make_tables(prefix: str = "", schema: str | None = None) -> Tables:
    """Build the table definitions (``prefix`` + name, optionally in a PostgreSQL schema)."""
    md = sa.MetaData(schema=schema)
    S = sa.String
    devices = sa.Table(
        f"{prefix}devices",
        md,
        sa.Column("id", S(64), primary_key=True),
        sa.Column("tags", sa.Text, nullable=False, default="{}"),
        sa.Column("profile", S(128)),
        sa.Column("active_name", S(128)),
        sa.Column("active_version", S(64)),
        sa.Column("active_release", sa.Integer),
        sa.Column("active_sha256", S(64)),
        sa.Column("previous_name", S(128)),
        sa.Column("previous_version", S(64)),
        sa.Column("pending_name", S(128)),
        sa.Column("pending_version", S(64)),
        sa.Column("state", S(64), nullable=False, default="unknown"),
        sa.Column("online", sa.Boolean, nullable=False, default=False),
        sa.Column("last_seen", sa.Float),
        sa.Column("state_ts", sa.Float),
        sa.Column("health", S(32), nullable=False, default="unknown"),
        sa.Column("agent_version", S(64), nullable=False, default=""),
        sa.Column("reported_cmd_seq", sa.BigInteger, nullable=False, default=0),
        sa.Column("cmd_seq", sa.BigInteger, nullable=False, default=0),
        sa.Column("enrolled_at", sa.Float, nullable=False),
    )
    events = sa.Table(
        f"{prefix}events",
        md,
        sa.Column("device_id", S(64), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("kind", S(64), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("target_name", S(128)),
        sa.Column("target_version", S(64)),
        sa.Column("command_id", S(128)),
        sa.Column("detail", sa.Text, nullable=False, default=""),
        sa.Column("gates", sa.Text, nullable=False, default="[]"),
        sa.Index(f"{prefix}ix_events_received", "received_at"),
    )
    telemetry = sa.Table(
        f"{prefix}telemetry",
        md,
        sa.Column("device_id", S(64), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("ts_start", sa.Float, nullable=False),
        sa.Column("ts_end", sa.Float, nullable=False),
        sa.Column("version_name", S(128)),
        sa.Column("version_version", S(64)),
        sa.Column("state", S(64), nullable=False, default=""),
        sa.Column("inference_count", sa.BigInteger, nullable=False, default=0),
        sa.Column("error_count", sa.BigInteger, nullable=False, default=0),
        sa.Column("nan_count", sa.BigInteger, nullable=False, default=0),
        sa.Column("p95_ms", sa.Float),
        sa.Column("p50_ms", sa.Float),  # added after the first release: see ADDED_COLUMNS
        sa.Column("agreement", sa.Float),
        sa.Column("dropped_batches", sa.Integer, nullable=False, default=0),
        sa.Column("received_at", sa.Float, nullable=False),
        # the gates' and /metrics' windows are on the console's receive clock (received_at), not the
        # device's ts_end; the partitioned table (fleet/partitions.py) has these two on its parent
        sa.Index(f"{prefix}ix_telemetry_version_recv", "version_name", "version_version", "received_at"),
        sa.Index(f"{prefix}ix_telemetry_recv", "received_at"),
    )
    rollouts = sa.Table(
        f"{prefix}rollouts",
        md,
        sa.Column("id", S(64), primary_key=True),
        sa.Column("bundle_name", S(128), nullable=False),
        sa.Column("bundle_version", S(64), nullable=False),
        sa.Column("release", sa.Integer, nullable=False, default=0),
        sa.Column("target_name", S(512), nullable=False),
        sa.Column("target_sha256", S(64), nullable=False),
        sa.Column("target_length", sa.BigInteger, nullable=False),
        sa.Column("targets", sa.Text),  # the version's target per profile (JSON; added later: see ADDED_COLUMNS)
        sa.Column("selector", sa.Text, nullable=False),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("status", S(32), nullable=False),
        sa.Column("status_reason", sa.Text, nullable=False, default=""),
        sa.Column("current_wave", sa.Integer, nullable=False, default=-1),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    waves = sa.Table(
        f"{prefix}waves",
        md,
        sa.Column("rollout_id", S(64), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("percent", sa.Float, nullable=False),
        sa.Column("status", S(32), nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("gates", sa.Text, nullable=False, default="[]"),
        sa.Column("reason", sa.Text, nullable=False, default=""),
    )
    assignments = sa.Table(
        f"{prefix}assignments",
        md,
        sa.Column("rollout_id", S(64), primary_key=True),
        sa.Column("device_id", S(64), primary_key=True),
        sa.Column("wave_idx", sa.Integer, nullable=False),
        sa.Column("bundle_name", S(128), nullable=False),
        sa.Column("bundle_version", S(64), nullable=False),
        sa.Column("target_name", S(512)),  # the profile's target it was assigned (added later: see ADDED_COLUMNS)
        sa.Column("command_id", S(128), nullable=False, unique=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("status", S(32), nullable=False),
        sa.Column("from_name", S(128)),
        sa.Column("from_version", S(64)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("sent_at", sa.Float),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("detail", sa.Text, nullable=False, default=""),
        sa.Column("rollback_command_id", S(128)),
        sa.Column("rollback_seq", sa.BigInteger),
        sa.Column("rollback_expires", sa.Float),
        sa.Column("rollback_sent_at", sa.Float),
        sa.Index(f"{prefix}ix_assign_device", "device_id", "status"),
        sa.Index(f"{prefix}ix_assign_rollout_status", "rollout_id", "status"),
    )
    audit = sa.Table(
        f"{prefix}audit",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("rollout_id", S(64), nullable=False),
        sa.Column("action", S(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=False, default=""),
        sa.Index(f"{prefix}ix_audit_rollout", "rollout_id"),
    )
    # A table of its own (not columns on an existing one): create_all adds it to a database made
    # by an earlier version on SQLite and PostgreSQL alike, with no migration step.
    commands = sa.Table(
        f"{prefix}commands",
        md,
        sa.Column("command_id", S(128), primary_key=True),
        sa.Column("device_id", S(64), nullable=False),
        sa.Column("kind", S(32), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("bundle_name", S(128)),
        sa.Column("bundle_version", S(64)),
        sa.Column("target_name", S(512)),
        sa.Column("runs", sa.Integer),
        sa.Column("status", S(32), nullable=False),
        sa.Column("actor", S(64), nullable=False, default=""),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("sent_at", sa.Float),
        sa.Index(f"{prefix}ix_commands_device", "device_id", "created_at"),
    )
    # A table of its own for the same reason; a row only for devices whose clock was seen off.
    device_clock = sa.Table(
        f"{prefix}device_clock",
        md,
        sa.Column("device_id", S(64), primary_key=True),
        sa.Column("skewed_messages", sa.BigInteger, nullable=False, default=0),
        sa.Column("last_skew_s", sa.Float, nullable=False),
        sa.Column("last_skewed_at", sa.Float, nullable=False),
    )
    # A table of its own (create_all adds it to an earlier database): only batches that carry
    # sketches have a row, and the drift queries read nothing else.
    sketches = sa.Table(
        f"{prefix}sketches",
        md,
        sa.Column("device_id", S(64), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True),
        sa.Column("version_name", S(128)),
        sa.Column("version_version", S(64)),
        sa.Column("rows", sa.BigInteger, nullable=False, default=0),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Index(f"{prefix}ix_sketches_version", "version_name", "version_version", "received_at"),
        sa.Index(f"{prefix}ix_sketches_received", "received_at"),
    )
    return Tables(md, devices, events, telemetry, rollouts, waves, assignments, audit, commands, device_clock, sketches)


SQLITE_MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999  # host parameters per statement
# Columns added to a table after databases were made without them: (table, column). create_all
# adds each one missing (ALTER TABLE .. ADD COLUMN, nullable, on SQLite and PostgreSQL), so an
# earlier database gains it on the next start; rows stored before it read NULL.
SCHEMA_LOCK_ID = 0x65646753  # PostgreSQL advisory lock key held while create_all creates or migrates tables

ADDED_COLUMNS: tuple[tuple[str, str], ...] = (("telemetry", "p50_ms"), ("rollouts", "targets"), ("assignments", "target_name"))


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the API and reconciler read while the ingest writer writes; busy_timeout makes
    # concurrent writers wait instead of failing.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def create_db_engine(url: str) -> Engine:
    """An engine for a SQLite file or PostgreSQL URL, tuned for several threads."""
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8, max_overflow=8)
            sa.event.listen(engine, "connect", _sqlite_pragmas)
            # pysqlite's implicit BEGIN is deferred; take the write lock at BEGIN so two writers
            # serialize on busy_timeout instead of failing with "database is locked" on upgrade.
            @sa.event.listens_for(engine, "connect")
            def _no_implicit_begin(dbapi_conn, _record):  # noqa: ANN001
                dbapi_conn.isolation_level = None

            @sa.event.listens_for(engine, "begin")
            def _begin(conn):  # noqa: ANN001
                # Write transactions (Database.begin) take the lock up front; reads stay deferred.
                conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("edgeops_write") else "BEGIN")

            return engine
        return sa.create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)
    except (sa.exc.ArgumentError, ImportError) as e:
        raise ConfigError(f"database.url {url!r}: {e}") from e


def _dialect_insert(engine: Engine):
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _bound_values(row: dict, cols: Sequence[str], binds: list) -> list:
    """The row's values of ``cols`` as SQLAlchemy would bind them (each column's processor, if any)."""
    return [v if p is None or v is None else p(v) for v, p in zip(map(row.__getitem__, cols), binds)]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _pg_type(t: sa.types.TypeEngine) -> str:
    if isinstance(t, sa.Boolean):
        return "boolean"
    if isinstance(t, sa.BigInteger):
        return "bigint"
    if isinstance(t, sa.Integer):
        return "integer"
    if isinstance(t, sa.Float):
        return "double precision"
    return "text"


def float_sum(expr: sa.ColumnElement) -> sa.ColumnElement:
    """SUM of an integer column in double precision: it cannot overflow on either dialect.

    Ingest bounds every count a device sends (edgeops.protocol.COUNT_MAX), so integer sums over a
    question stay far inside int64 anyway; summing as float also keeps rows stored before those
    bounds from failing the gates and /metrics (SQLite raises on an int64 overflow). Counts are
    exact as floats up to 2^53.
    """
    return sa.func.sum(sa.cast(expr, sa.Float))


def weighted_p95_sums(tel: sa.Table) -> tuple[sa.ColumnElement, sa.ColumnElement]:
    """SUM(p95 x inferences) and SUM(inferences) over telemetry rows that report a p95: their
    ratio is the inference-weighted mean p95 (the rollout latency gates and the metrics)."""
    reported = tel.c.p95_ms.is_not(None)
    return (
        sa.func.sum(sa.case((reported, tel.c.p95_ms * sa.cast(tel.c.inference_count, sa.Float)), else_=0.0)),
        float_sum(sa.case((reported, tel.c.inference_count), else_=0)),
    )


def health_sums(tel: sa.Table) -> list[sa.ColumnElement]:
    """SUM of inferences, errors and NaN outputs (as floats) and :func:`weighted_p95_sums`: the
    columns every telemetry aggregate (rollout gates, /metrics) starts with, in this order."""
    return [float_sum(tel.c.inference_count), float_sum(tel.c.error_count), float_sum(tel.c.nan_count), *weighted_p95_sums(tel)]


def weighted_p50_sums(tel: sa.Table) -> tuple[sa.ColumnElement, sa.ColumnElement]:
    """As :func:`weighted_p95_sums` for the p50 column (rows stored before it: NULL, left out)."""
    reported = tel.c.p50_ms.is_not(None)
    return (
        sa.func.sum(sa.case((reported, tel.c.p50_ms * sa.cast(tel.c.inference_count, sa.Float)), else_=0.0)),
        float_sum(sa.case((reported, tel.c.inference_count), else_=0)),
    )


def dumps(value: Any) -> str:
    """Compact, stable JSON for text columns."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Database:
    """Engine + tables + the statements every module shares.

    Higher-level modules (registry, ingest, rollouts) take a ``Database`` and run their own
    queries on ``db.t.<table>`` inside ``db.begin()`` / ``db.connect()``.
    """

    def __init__(self, url: str, schema: str | None = None, table_prefix: str = "", telemetry_partitions: str = "auto"):
        if telemetry_partitions not in partitions.MODES:
            raise ConfigError(f"database.telemetry_partitions: {telemetry_partitions!r} is not one of {', '.join(partitions.MODES)}")
        self.url = url
        self.engine = create_db_engine(url)
        self.schema = schema if self.engine.dialect.name == "postgresql" else None
        self.table_prefix = table_prefix
        self.t = make_tables(table_prefix, self.schema)
        self._write_engine = self.engine.execution_options(edgeops_write=True)
        self._binds: dict[tuple, list | None] = {}  # (table, columns, every) -> _sqlite_binds' answer
        self._insert = _dialect_insert(self.engine)
        if telemetry_partitions == "daily" and self.dialect != "postgresql":
            raise ConfigError("database.telemetry_partitions = \"daily\" needs PostgreSQL (SQLite keeps one table and deletes expired rows); set it to \"auto\" or \"off\"")
        self.telemetry_partitions = telemetry_partitions
        # whether the telemetry table is partitioned: known after create_all, else looked up once
        self._tel_partitioned: bool | None = None if self.dialect == "postgresql" else False

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self.engine.dialect.name

    def create_all(self, extra_tables: Iterable[sa.Table] = ()) -> None:
        """Create the schema (and the PostgreSQL schema namespace) when missing, with
        ``extra_tables`` (tables other modules define on this database, e.g. the capture index)."""
        try:
            # a write transaction (SQLite: BEGIN IMMEDIATE): two consoles starting on one file
            # do not both decide a column is missing
            with self.begin() as conn:
                if self.dialect == "postgresql":
                    # replicas (or `fleet enroll`) starting together: DDL is transactional, so the
                    # others wait here and then find the tables made (two concurrent CREATE TABLE of
                    # one name fail one of them on pg_type's unique index, and that replica exited)
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": SCHEMA_LOCK_ID})
                if self.schema:
                    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
                if self.dialect == "postgresql":
                    self._create_telemetry_pg(conn)
                self.t.metadata.create_all(conn)
                self._add_missing_columns(conn)
                for index in self.t.telemetry.indexes:  # added later: a table made earlier gains them
                    index.create(conn, checkfirst=True)
                for table in extra_tables:
                    table.create(conn, checkfirst=True)
        except sa.exc.OperationalError as e:
            raise FleetError(f"database {self.engine.url.render_as_string(hide_password=True)}: {e.orig}") from e

    def _create_telemetry_pg(self, conn: Connection) -> None:
        """PostgreSQL: the telemetry table partitioned by day (fleet/partitions.py) unless
        ``telemetry_partitions`` is "off"; an existing plain table stays plain under "auto" (a
        warning names the migration) and is refused under "daily"."""
        name = self.t.telemetry.name
        # replicas starting together: one decides and creates, the others see its table
        partitions.lock(conn, self.schema, name)
        kind = partitions.table_kind(conn, self.schema, name)
        if kind is None and self.telemetry_partitions != "off":
            partitions.create_partitioned(conn, self.t.telemetry, self.schema, self.table_prefix)
            kind = "partitioned"
        if kind == "plain" and self.telemetry_partitions == "daily":
            raise FleetError(
                f"database {self.engine.url.render_as_string(hide_password=True)}: table {partitions.qualified(self.schema, name)} is not partitioned "
                f'but database.telemetry_partitions = "daily": run `edgeops fleet db partition-telemetry --config FLEET.toml` once (it copies the '
                f'rows within ingest.telemetry_retention_s; consoles stopped), or set telemetry_partitions = "auto" to keep the plain table'
            )
        if kind == "plain" and self.telemetry_partitions == "auto":
            log.warning("table %s is not partitioned: retention deletes rows; `edgeops fleet db partition-telemetry` partitions it by day", name)
        self._tel_partitioned = kind == "partitioned"
        if self._tel_partitioned:
            partitions.ensure_partitions(conn, self.schema, name)

    def telemetry_partitioned(self) -> bool:
        """True when the telemetry table is partitioned by day (PostgreSQL)."""
        if self._tel_partitioned is None:
            with self.connect() as conn:
                self._tel_partitioned = partitions.table_kind(conn, self.schema, self.t.telemetry.name) == "partitioned"
        return self._tel_partitioned

    def _add_missing_columns(self, conn: Connection) -> None:
        """The migration of :data:`ADDED_COLUMNS`: add each one a table made earlier lacks."""
        inspector = sa.inspect(conn)
        for key, column in ADDED_COLUMNS:
            table: sa.Table = getattr(self.t, key)
            have = {c["name"] for c in inspector.get_columns(table.name, schema=self.schema)}
            if column not in have:
                col = table.c[column]
                kind = col.type.compile(dialect=conn.dialect)
                # IF NOT EXISTS (PostgreSQL): two replicas starting at once both try
                guard = "IF NOT EXISTS " if self.dialect == "postgresql" else ""
                conn.execute(sa.text(f"ALTER TABLE {self._qualified(table)} ADD COLUMN {guard}{_q(column)} {kind}"))

    def drop_all(self) -> None:
        """Drop every table (and the PostgreSQL schema when one is configured). Tests only."""
        with self.engine.begin() as conn:
            if self.schema:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            else:
                self.t.metadata.drop_all(conn)

    def begin(self):
        """A write transaction (context manager yielding a Connection)."""
        return self._write_engine.begin()

    def connect(self):
        """A connection for reads (context manager)."""
        return self.engine.connect()

    def insert_ignore_returning(self, conn: Connection, table: sa.Table, rows: Sequence[dict], key: Sequence[str]) -> list[tuple]:
        """Insert rows, skipping those whose primary key exists; return the keys inserted.

        All rows must have the same columns. On PostgreSQL this is one ``INSERT .. SELECT FROM
        unnest(arrays)`` (a short statement whatever the batch size: psycopg parses huge
        multi-row VALUES statements slowly); on SQLite a multi-row insert.
        """
        if not rows:
            return []
        if self.dialect == "postgresql":
            cols = list(rows[0].keys())
            # a partitioned telemetry table holds its duplicate key per day: look in every day too
            join, where = partitions.dedup_join(self.schema, table.name, "u") if table is self.t.telemetry and self.telemetry_partitioned() else ("", "")
            sql = (
                f"INSERT INTO {self._qualified(table)} ({', '.join(_q(c) for c in cols)}) "
                f"SELECT u.* FROM unnest({', '.join(f'%s::{_pg_type(table.c[c].type)}[]' for c in cols)}) AS u({', '.join(_q(c) for c in cols)}) {join} {where} "
                f"ON CONFLICT DO NOTHING RETURNING {', '.join(_q(k) for k in key)}"
            )
            return [tuple(r) for r in conn.exec_driver_sql(sql, tuple([r[c] for r in rows] for c in cols)).all()]
        cols = list(rows[0].keys())
        binds = self._sqlite_binds(table, cols, every=True)
        if binds is not None:
            # the statement SQLAlchemy would build (a multi-row insert), without building it: at a
            # few rows per batch, constructing and caching the statement cost more than running it
            one = f"({', '.join('?' * len(cols))})"
            head = f"INSERT INTO {_q(table.name)} ({', '.join(_q(c) for c in cols)}) VALUES "
            tail = f" ON CONFLICT DO NOTHING RETURNING {', '.join(_q(k) for k in key)}"
            per = max(1, SQLITE_MAX_VARIABLES // len(cols))
            out: list[tuple] = []
            for i in range(0, len(rows), per):
                chunk = rows[i : i + per]
                params = tuple(v for r in chunk for v in _bound_values(r, cols, binds))
                out += [tuple(r) for r in conn.exec_driver_sql(head + ", ".join([one] * len(chunk)) + tail, params).all()]
            return out
        stmt = self._insert(table).on_conflict_do_nothing().returning(*(table.c[k] for k in key), sort_by_parameter_order=False)
        return [tuple(r) for r in conn.execute(stmt, list(rows)).all()]

    def _sqlite_binds(self, table: sa.Table, cols: Sequence[str], every: bool = False) -> list | None:
        """SQLite: the bind processor of each column (None where the driver takes the value as it
        is), for statements run through the driver; None when not SQLite, or (``every``) when the
        rows do not name every column (a Python-side default would be left to fill)."""
        if self.dialect != "sqlite":
            return None
        key = (table.name, tuple(cols), every)
        if key not in self._binds:
            dialect = self.engine.dialect
            ok = all(c in table.c for c in cols) and (not every or set(cols) == set(table.c.keys()))
            self._binds[key] = [table.c[c].type.bind_processor(dialect) for c in cols] if ok else None
        return self._binds[key]

    def bulk_update(self, conn: Connection, table: sa.Table, key: str, rows: Sequence[dict]) -> None:
        """``UPDATE table SET col = value WHERE key = id`` for many rows (dicts with ``key`` and the same columns)."""
        if not rows:
            return
        cols = [c for c in rows[0] if c != key]
        if self.dialect == "postgresql":
            all_cols = [key] + cols
            sql = (
                f"UPDATE {self._qualified(table)} AS t SET {', '.join(f'{_q(c)} = u.{_q(c)}' for c in cols)} "
                f"FROM unnest({', '.join(f'%s::{_pg_type(table.c[c].type)}[]' for c in all_cols)}) AS u({', '.join(_q(c) for c in all_cols)}) "
                f"WHERE t.{_q(key)} = u.{_q(key)}"
            )
            conn.exec_driver_sql(sql, tuple([r[c] for r in rows] for c in all_cols))
            return
        binds = self._sqlite_binds(table, [*cols, key])
        if binds is not None:
            # executemany of one plain statement, as SQLAlchemy would run it, without building it
            sql = f"UPDATE {_q(table.name)} SET {', '.join(f'{_q(c)} = ?' for c in cols)} WHERE {_q(key)} = ?"
            conn.exec_driver_sql(sql, [tuple(_bound_values(r, [*cols, key], binds)) for r in rows])
            return
        stmt = table.update().where(table.c[key] == sa.bindparam(f"b_{key}")).values({c: sa.bindparam(f"b_{c}") for c in cols})
        conn.execute(stmt, [{f"b_{k}": v for k, v in r.items()} for r in rows])

    def _qualified(self, table: sa.Table) -> str:
        return f"{_q(self.schema)}.{_q(table.name)}" if self.schema else _q(table.name)

    def upsert(self, conn: Connection, table: sa.Table, rows: Sequence[dict], key: Sequence[str], update: Iterable[str]) -> None:
        """Insert rows or update the given columns when the key exists."""
        if not rows:
            return
        stmt = self._insert(table)
        cols = list(update)
        if cols:
            stmt = stmt.on_conflict_do_update(index_elements=list(key), set_={c: stmt.excluded[c] for c in cols})
        else:
            stmt = stmt.on_conflict_do_nothing()
        conn.execute(stmt, list(rows))

    def add_clock_skew(self, conn: Connection, rows: Sequence[dict]) -> None:
        """Add to the per-device clock-skew counts: dicts with ``device_id``, ``skewed_messages``
        (this batch), ``last_skew_s`` and ``last_skewed_at``."""
        if not rows:
            return
        t = self.t.device_clock
        stmt = self._insert(t)
        stmt = stmt.on_conflict_do_update(
            index_elements=["device_id"],
            set_={"skewed_messages": t.c.skewed_messages + stmt.excluded.skewed_messages, "last_skew_s": stmt.excluded.last_skew_s, "last_skewed_at": stmt.excluded.last_skewed_at},
        )
        conn.execute(stmt, list(rows))

    def dispose(self) -> None:
        """Close the pool."""
        self.engine.dispose()

    @classmethod
    def from_config(cls, config) -> "Database":
        """A Database for a FleetConfig."""
        return cls(
            config.database_url(), schema=config.database.schema_name, table_prefix=config.database.table_prefix,
            telemetry_partitions=config.database.telemetry_partitions,
        )
