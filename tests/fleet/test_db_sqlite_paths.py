"""fleet/db.py's driver-level SQLite statements (insert_ignore_returning, bulk_update) store what
SQLAlchemy's statements would: the same rows, values bound through the columns' types, the keys
of new rows only, chunks within SQLite's host-parameter limit, defaults where a row names fewer
columns (SQLAlchemy's own statement then)."""

from __future__ import annotations

import sqlalchemy as sa

from edgeops.fleet import db as dbmod


def _telemetry_row(device: str, seq: int, **kw) -> dict:
    row = {
        "device_id": device, "seq": seq, "ts_start": 1, "ts_end": 2.5, "version_name": "digits", "version_version": "1.0.0",
        "state": "idle", "inference_count": 10, "error_count": 0, "nan_count": 0, "p95_ms": None, "p50_ms": 3,
        "agreement": None, "dropped_batches": 0, "received_at": 100,
    }
    row.update(kw)
    return row


def _rows(db, table, order_by):
    with db.connect() as c:
        return [tuple(r) for r in c.execute(sa.select(table).order_by(*order_by))]


def test_insert_ignore_returning_returns_new_keys_only_and_binds_through_the_column_types(sqlite_db, monkeypatch):
    db = sqlite_db
    monkeypatch.setattr(dbmod, "SQLITE_MAX_VARIABLES", 40)  # 2 rows of 15 columns per statement: chunks
    t = db.t.telemetry
    with db.begin() as conn:
        first = db.insert_ignore_returning(conn, t, [_telemetry_row("d0", s) for s in range(5)], ["device_id", "seq"])
    with db.begin() as conn:
        again = db.insert_ignore_returning(conn, t, [_telemetry_row("d0", s, state="x") for s in range(3, 8)], ["device_id", "seq"])
    assert sorted(first) == [("d0", s) for s in range(5)]
    assert sorted(again) == [("d0", s) for s in (5, 6, 7)]
    rows = _rows(db, t, [t.c.seq])
    assert len(rows) == 8 and [r[6] for r in rows] == ["idle"] * 5 + ["x"] * 3  # duplicates kept the first
    with db.connect() as c:  # Float columns bound as floats, as SQLAlchemy binds them
        types = c.exec_driver_sql("SELECT typeof(ts_start), typeof(p50_ms), typeof(received_at), typeof(p95_ms) FROM telemetry WHERE seq = 0").one()
    assert tuple(types) == ("real", "real", "real", "null")


def test_rows_that_leave_out_columns_get_their_defaults(sqlite_db):
    db = sqlite_db
    t = db.t.devices
    with db.begin() as conn:
        new = db.insert_ignore_returning(conn, t, [{"id": "d9", "enrolled_at": 5.0}], ["id"])
    assert new == [("d9",)]
    with db.connect() as c:
        row = c.execute(sa.select(t.c.tags, t.c.state, t.c.health, t.c.online).where(t.c.id == "d9")).one()
    assert tuple(row) == ("{}", "unknown", "unknown", False)


def test_bulk_update_sets_each_row_and_binds_booleans(sqlite_db):
    db = sqlite_db
    t = db.t.devices
    with db.begin() as conn:
        db.insert_ignore_returning(conn, t, [{"id": f"d{i}", "enrolled_at": 1.0} for i in range(3)], ["id"])
        db.bulk_update(conn, t, "id", [{"id": "d0", "online": True, "last_seen": 7, "health": "healthy"}, {"id": "d2", "online": False, "last_seen": 9.5, "health": "unhealthy"}])
    with db.connect() as c:
        rows = [tuple(r) for r in c.execute(sa.select(t.c.id, t.c.online, t.c.last_seen, t.c.health).order_by(t.c.id))]
        stored = c.exec_driver_sql("SELECT typeof(online), online, typeof(last_seen) FROM devices WHERE id = 'd0'").one()
    assert rows == [("d0", True, 7.0, "healthy"), ("d1", False, None, "unknown"), ("d2", False, 9.5, "unhealthy")]
    assert tuple(stored) == ("integer", 1, "real")
