"""Telemetry keeps the latency p50 devices send (issue 18): the column, its migration on a
database made before it, ingest (the device's figure, or the histogram's), and the per-device
values the rollout judge reads."""

from __future__ import annotations

import sqlalchemy as sa

from edgeops.fleet.config import IngestConfig
from edgeops.fleet.ingest import Ingestor, quantile_from_histogram
from edgeops.fleet.registry import register_devices
from edgeops.protocol import TelemetryBatch, VersionRef, telemetry_topic
from tests.fleet.helpers import telemetry


def _columns(db) -> set[str]:
    with db.connect() as c:
        return {col["name"] for col in sa.inspect(c).get_columns(db.t.telemetry.name, schema=db.schema)}


def test_an_earlier_database_gains_the_p50_column(db):
    """A telemetry table made without p50_ms (as before this column) gets it on the next
    create_all; its rows stay and read NULL; a second create_all changes nothing."""
    register_devices(db, [{"id": "d0"}])
    ing = Ingestor(db, IngestConfig(flush_interval_s=0.02)).start()
    try:
        ing.submit(*telemetry("d0", 1, p50=2.0))
        assert ing.flush(30)
    finally:
        ing.stop()
    table = f'"{db.schema}"."{db.t.telemetry.name}"' if db.schema else f'"{db.t.telemetry.name}"'
    with db.begin() as c:
        c.execute(sa.text(f"ALTER TABLE {table} DROP COLUMN p50_ms"))
    assert "p50_ms" not in _columns(db)
    db.create_all()
    assert "p50_ms" in _columns(db)
    db.create_all()
    with db.connect() as c:
        rows = c.execute(sa.select(db.t.telemetry.c.seq, db.t.telemetry.c.p50_ms, db.t.telemetry.c.p95_ms)).all()
    assert [tuple(r) for r in rows] == [(1, None, 5.0)]


def test_ingest_stores_the_p50_sent_or_read_off_the_histogram(db):
    register_devices(db, [{"id": "d0"}, {"id": "d1"}])
    hist = TelemetryBatch(
        device_id="d1", seq=1, ts_start=1.0, ts_end=2.0, active=VersionRef(name="digits", version="1.0.0"), inference_count=10,
        latency_buckets_ms=[1.0, 2.0, 4.0, 8.0], latency_counts=[2, 4, 3, 1, 0],
    )
    ing = Ingestor(db, IngestConfig(flush_interval_s=0.02)).start()
    try:
        ing.submit(*telemetry("d0", 1, p50=3.5, p95=9.0))
        ing.submit(telemetry_topic("d1"), hist.to_json().encode())
        assert ing.flush(30)
    finally:
        ing.stop()
    with db.connect() as c:
        got = {r.device_id: (r.p50_ms, r.p95_ms) for r in c.execute(sa.select(db.t.telemetry))}
    # d1: 2 + 4 of 10 inferences within 2 ms -> p50 in the (1, 2] bucket; p95 in (4, 8]
    assert got == {"d0": (3.5, 9.0), "d1": (2.0, 8.0)}


def test_quantile_from_histogram():
    assert quantile_from_histogram([1.0, 2.0], [5, 5, 0], 0.5) == 1.0
    assert quantile_from_histogram([1.0, 2.0], [1, 1, 8], 0.5) == 2.0  # overflow bucket: the last bound
    assert quantile_from_histogram([1.0, 2.0], [], 0.5) is None
    assert quantile_from_histogram([1.0, 2.0], [1], 0.5) is None  # inconsistent lengths


def test_the_device_page_series_and_chart_carry_p50(db):
    from edgeops.fleet.ui.pages import device_live
    from edgeops.fleet.ui.queries import telemetry_series

    register_devices(db, [{"id": "d0"}])
    ing = Ingestor(db, IngestConfig(flush_interval_s=0.02)).start()
    try:
        ing.submit(*telemetry("d0", 1, p50=2.5, p95=6.0))
        assert ing.flush(30)
    finally:
        ing.stop()
    series = telemetry_series(db, "d0")
    assert [(s["p50_ms"], s["p95_ms"]) for s in series] == [(2.5, 6.0)]
    html = device_live([], series)
    assert '{"label":"p50 ms","values":[2.5],"dash":true}' in html and "Latency (p50, p95)" in html


def test_an_earlier_database_gains_the_receive_clock_indexes(db):
    """The gates and /metrics filter telemetry on received_at; a table made when its only index
    was on ts_end gets the received_at indexes on the next create_all (plain or partitioned)."""
    def indexes() -> set[str]:
        with db.connect() as c:
            return {ix["name"] for ix in sa.inspect(c).get_indexes(db.t.telemetry.name, schema=db.schema)}

    wanted = {ix.name for ix in db.t.telemetry.indexes}
    assert wanted <= indexes() and any("received_at" in [c.name for c in ix.columns] for ix in db.t.telemetry.indexes)
    with db.begin() as c:
        for name in wanted:
            c.execute(sa.text(f'DROP INDEX {f"{chr(34)}{db.schema}{chr(34)}." if db.schema else ""}"{name}"'))
    assert not wanted & indexes()
    db.create_all()
    assert wanted <= indexes()
