"""Daily telemetry partitions on the local PostgreSQL (fleet/partitions.py): created ahead, rows in
their day, retention by DROP, the gates' queries unchanged, the migration of a plain table.

Each test gets its own PostgreSQL schema; they skip with the reason when PostgreSQL at
127.0.0.1:5432 is not reachable.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest
import sqlalchemy as sa

from edgeops.errors import ConfigError, FleetError
from edgeops.fleet import partitions
from edgeops.fleet.db import Database, dumps
from edgeops.fleet.metrics import FleetCollector
from edgeops.fleet.rollouts import queries
from edgeops.fleet.rollouts.settings import RolloutSettings
from tests.fleet.conftest import PG_OK, PG_URL

pytestmark = pytest.mark.skipif(not PG_OK, reason="PostgreSQL at 127.0.0.1:5432 is not reachable")

DAY = partitions.DAY_S


@pytest.fixture
def make_pg():
    """Databases in fresh schemas, dropped after the test."""
    made: list[Database] = []

    def make(mode: str = "auto", schema: str | None = None, create: bool = True) -> Database:
        db = Database(PG_URL, schema=schema or f"edgeops_test_{uuid.uuid4().hex[:12]}", telemetry_partitions=mode)
        made.append(db)
        if create:
            db.create_all()
        return db

    yield make
    for db in made:
        db.drop_all()
        db.dispose()


def _row(device: str, seq: int, received_at: float, version: str = "2.0.0", inferences: int = 100, p95: float = 5.0) -> dict:
    return {
        "device_id": device, "seq": seq, "ts_start": received_at - 60, "ts_end": received_at, "version_name": "digits", "version_version": version,
        "state": "", "inference_count": inferences, "error_count": seq % 3, "nan_count": 0, "p95_ms": p95, "p50_ms": p95 / 2,
        "agreement": 0.9 if seq % 2 else None, "dropped_batches": 0, "received_at": received_at,
    }


def _insert(db: Database, rows: list[dict]) -> set[tuple]:
    with db.begin() as conn:  # the ingest writer's statement
        return set(db.insert_ignore_returning(conn, db.t.telemetry, rows, ["device_id", "seq"]))


def _where_rows_are(db: Database) -> dict[tuple[str, int], str]:
    with db.connect() as conn:
        rows = conn.execute(sa.text(f'SELECT device_id, seq, tableoid::regclass::text FROM "{db.schema}".telemetry')).all()
    return {(d, s): part.split(".")[-1].strip('"') for d, s, part in rows}


def test_new_table_is_partitioned_with_days_ahead(make_pg):
    db = make_pg()
    now = time.time()
    with db.connect() as conn:
        assert partitions.table_kind(conn, db.schema, "telemetry") == "partitioned"
        parts = partitions.list_partitions(conn, db.schema, "telemetry")
    today = partitions.day_start(now)
    assert [p.lo for p in parts] == [float(today + k * DAY) for k in range(-partitions.BACK_DAYS, partitions.AHEAD_DAYS + 1)]
    assert all(p.hi - p.lo == DAY for p in parts)
    assert parts[-partitions.AHEAD_DAYS - 1].name == partitions.partition_name("telemetry", today)
    assert db.telemetry_partitioned()
    # a second replica starting on it creates nothing and keeps it partitioned
    again = Database(PG_URL, schema=db.schema)
    again.create_all()
    with again.connect() as conn:
        assert partitions.list_partitions(conn, db.schema, "telemetry") == parts
    again.dispose()


def test_rows_land_in_their_day_and_redeliveries_are_dropped(make_pg):
    db = make_pg()
    today = partitions.day_start(time.time())
    first = _insert(db, [_row("d1", 1, today + 10), _row("d1", 2, today + DAY + 10), _row("d2", 1, today + 2 * DAY + 10)])
    assert first == {("d1", 1), ("d1", 2), ("d2", 1)}
    where = _where_rows_are(db)
    assert where[("d1", 1)] == partitions.partition_name("telemetry", today)
    assert where[("d1", 2)] == partitions.partition_name("telemetry", today + DAY)
    assert where[("d2", 1)] == partitions.partition_name("telemetry", today + 2 * DAY)
    # the same batches again (a redelivery carries the device's own times): received the same day
    # (the partition's key) and days later (the insert's guard); and a new batch twice in one insert
    again = _insert(db, [
        {**_row("d1", 1, today + 10), "received_at": today + 20},
        {**_row("d1", 1, today + 10), "received_at": today + 3 * DAY},
        {**_row("d1", 2, today + DAY + 10), "received_at": today + 3 * DAY + 5},
        _row("d1", 3, today + 30), _row("d1", 3, today + 40),
    ])
    assert again == {("d1", 3)}
    assert len(_where_rows_are(db)) == 4


def test_leader_creates_ahead_and_retention_drops_whole_days(make_pg):
    db = make_pg()
    today = partitions.day_start(time.time())
    now = today + DAY / 2  # midday: which days expire does not hang on the hour the test runs
    with db.begin() as conn:  # 10 days of history
        partitions.ensure_partitions(conn, db.schema, "telemetry", now=now, since=today - 10 * DAY)
    _insert(db, [_row("d1", k, today - k * DAY + 100) for k in range(0, 11)])
    cutoff = now - (7 * DAY + 3600)
    with db.begin() as conn:
        dropped = partitions.drop_expired(conn, db.schema, "telemetry", cutoff)
        left = partitions.list_partitions(conn, db.schema, "telemetry")
        # the leader's hourly pass a day later creates the next day ahead
        created = partitions.ensure_partitions(conn, db.schema, "telemetry", now=now + DAY)
    # a partition goes only when all of it is past the retention; the day holding the cutoff stays
    assert {p.lo for p in dropped} == {float(today - k * DAY) for k in range(8, 11)}
    assert left[0].lo == today - 7 * DAY and left[0].lo < cutoff < left[0].hi
    assert sorted(s for _, s in _where_rows_are(db)) == list(range(0, 8))  # the newer days kept every row
    assert created == [partitions.partition_name("telemetry", today + (partitions.AHEAD_DAYS + 1) * DAY)]


def test_console_retention_drops_partitions_on_postgresql(make_pg, tmp_path):
    from edgeops.fleet.config import config_from_dict
    from edgeops.fleet.console import FleetConsole

    db = make_pg()
    today = partitions.day_start(time.time())
    with db.begin() as conn:
        partitions.ensure_partitions(conn, db.schema, "telemetry", since=today - 9 * DAY)
    _insert(db, [_row("d1", k, today - k * DAY + 100) for k in range(0, 10)])
    config = config_from_dict({"database": {"url": PG_URL, "schema": db.schema}, "ingest": {"telemetry_retention_s": 7 * DAY}, "repository": {"dir": str(tmp_path / "repo"), "keys_dir": str(tmp_path / "keys")}})
    console = FleetConsole(config, db=db, mqtt=False, api=False, reconcile=False)
    # today - 9 and today - 8 days end at or before now - 7 days whatever the hour; today - 7 does not
    assert console.prune_telemetry() == 2
    assert sorted(s for _, s in _where_rows_are(db)) == list(range(0, 8))
    with db.connect() as conn:
        assert partitions.list_partitions(conn, db.schema, "telemetry")[-1].lo == today + partitions.AHEAD_DAYS * DAY


def _exact_or_close(value, close: bool = True):
    """``value`` with every float wrapped in pytest.approx: PostgreSQL sums a partitioned table
    partition by partition, so a SUM of floats may differ from the plain table's in the last bit
    (12669.999999999998 against 12670.0 in one CI run); everything else must be equal."""
    if dataclasses.is_dataclass(value):
        return tuple(_exact_or_close(v, close) for v in dataclasses.astuple(value))
    if isinstance(value, (list, tuple)):
        return tuple(_exact_or_close(v, close) for v in value)
    if close and isinstance(value, float):
        return pytest.approx(value, rel=1e-12, abs=1e-9)
    return value


def _gate_answers(db: Database, rollout, since: float):
    with db.connect() as conn:
        answers = (
            queries.new_version_telemetry(db, conn, rollout, 0, since),
            sorted(queries.wave_device_telemetry(db, conn, rollout, 0, since), key=lambda r: r.device_id),
            sorted(queries.control_device_telemetry(db, conn, rollout, ["1.0.0"], {f"d{i}" for i in range(20)}, since), key=lambda r: r.device_id),
        )
    from prometheus_client.core import GaugeMetricFamily

    metrics = {m.name: sorted((tuple(s.labels.values()), s.value) for s in m.samples) for m in FleetCollector(db)._db_metrics(GaugeMetricFamily) if m.name.startswith("edgeops_telemetry")}
    return answers, metrics


def test_gates_queries_answer_the_same_as_the_plain_table(make_pg):
    plain, parted = make_pg("off"), make_pg("daily")
    assert not plain.telemetry_partitioned() and parted.telemetry_partitioned()
    now = time.time()
    settings = RolloutSettings(bundle_name="digits", bundle_version="2.0.0")
    rows = []
    for i in range(20):  # d0..d9 in wave 0 on 2.0.0, d10..d19 the control on 1.0.0; some rows before the window
        for k in range(12):
            rows.append(_row(f"d{i}", k, now - k * 900, "2.0.0" if i < 10 else "1.0.0", inferences=50 + i + k, p95=4.0 + i * 0.1 + k * 0.01))
    for db in (plain, parted):
        with db.begin() as conn:
            conn.execute(db.t.devices.insert(), [{"id": f"d{i}", "tags": dumps({"site": "a"}), "profile": "p", "enrolled_at": now} for i in range(20)])
            conn.execute(db.t.rollouts.insert(), [{"id": "r1", "bundle_name": "digits", "bundle_version": "2.0.0", "release": 2, "target_name": "t", "target_sha256": "0" * 64, "target_length": 1, "selector": "{}", "settings": settings.model_dump_json(), "status": "running", "created_at": now, "updated_at": now}])
            conn.execute(db.t.assignments.insert(), [
                {"rollout_id": "r1", "device_id": f"d{i}", "wave_idx": 0, "bundle_name": "digits", "bundle_version": "2.0.0", "command_id": f"c{i}", "seq": 1, "expires": now + 3600, "status": "installed", "created_at": now, "updated_at": now}
                for i in range(10)
            ])
        assert len(_insert(db, rows)) == len(rows)
    since = now - 4 * 900 - 0.5
    with plain.connect() as conn:
        rollout = queries.load_rollout(plain, conn, "r1")
    plain_answers, plain_metrics = _gate_answers(plain, rollout, since)
    parted_answers, parted_metrics = _gate_answers(parted, rollout, since)
    assert _exact_or_close(parted_answers, close=False) == _exact_or_close(plain_answers)
    assert {k: _exact_or_close(v, close=False) for k, v in parted_metrics.items()} == {k: _exact_or_close(v) for k, v in plain_metrics.items()}
    assert plain_answers[0].inferences > 0 and len(plain_answers[1]) == 10 and len(plain_answers[2]) == 10
    assert plain_metrics["edgeops_telemetry_inferences"]  # the last 5 minutes hold rows of both versions


def test_daily_refuses_a_plain_table_and_the_migration_partitions_it(make_pg):
    plain = make_pg("off")
    now = time.time()
    today = partitions.day_start(now)
    _insert(plain, [_row("d1", k, now - k * DAY) for k in range(10)])  # 10 days, 3 past a 7-day retention
    with pytest.raises(FleetError, match="partition-telemetry"):
        make_pg("daily", schema=plain.schema)
    auto = make_pg("auto", schema=plain.schema)  # "auto" keeps a plain table as it is
    assert not auto.telemetry_partitioned()
    with plain.begin() as conn:
        report = partitions.migrate(conn, plain.t.telemetry, plain.schema, "", 7 * DAY + 60, now=now)
    assert report.copied == 8 and report.skipped_expired == 2
    assert report.partitions[0] == partitions.partition_name("telemetry", today - 7 * DAY)
    after = make_pg("daily", schema=plain.schema)
    assert after.telemetry_partitioned()
    assert sorted(s for _, s in _where_rows_are(after)) == list(range(8))
    # a redelivery of a migrated batch (its own times) is still a duplicate
    assert _insert(after, [{**_row("d1", 3, now - 3 * DAY), "received_at": now}]) == set()


def test_daily_needs_postgresql(tmp_path):
    with pytest.raises(ConfigError, match="needs PostgreSQL"):
        Database(f"sqlite:///{tmp_path / 'fleet.db'}", telemetry_partitions="daily")


def test_rows_of_no_day_go_to_the_default_partition_and_move_out_when_their_day_comes(make_pg):
    db = make_pg()
    today = partitions.day_start(time.time())
    later = today + 10 * DAY  # past the days created ahead (no replica ran for a week, say)
    assert _insert(db, [_row("d1", 1, 996400.0), _row("d1", 2, later + 50.0), _row("d1", 3, today + 5.0)]) == {("d1", 1), ("d1", 2), ("d1", 3)}
    where = _where_rows_are(db)
    assert where[("d1", 1)] == where[("d1", 2)] == partitions.default_name("telemetry")
    assert _insert(db, [{**_row("d1", 2, later + 50.0), "received_at": later + 60.0}]) == set()  # still a duplicate there
    with db.begin() as conn:
        created = partitions.ensure_partitions(conn, db.schema, "telemetry", now=later)
    assert partitions.partition_name("telemetry", later) in created
    assert _where_rows_are(db)[("d1", 2)] == partitions.partition_name("telemetry", later)
    with db.begin() as conn:  # retention deletes the default partition's rows by age
        partitions.drop_expired(conn, db.schema, "telemetry", today - 7 * DAY)
    assert set(_where_rows_are(db)) == {("d1", 2), ("d1", 3)}


def test_the_cli_lists_and_migrates(make_pg, tmp_path):
    import json

    from click.testing import CliRunner

    from edgeops.fleet.cli import fleet
    from edgeops.fleet.config import render_toml

    plain = make_pg("off")
    now = time.time()
    _insert(plain, [_row("d1", k, now - k * DAY) for k in range(10)])
    toml = tmp_path / "fleet.toml"
    toml.write_text(render_toml({"database": {"url": PG_URL, "schema": plain.schema}, "ingest": {"telemetry_retention_s": 7 * DAY + 60}}))

    def run(*args):
        res = CliRunner().invoke(fleet, ["db", *args, "--config", str(toml), "--json"])
        return res.exit_code, (json.loads(res.output) if res.exit_code == 0 else str(res.exception))

    assert run("partitions") == (0, {"table": "telemetry", "kind": "plain", "partitions": []})
    code, out = run("partition-telemetry")
    assert code == 0 and out["copied"] == 8 and out["skipped_expired"] == 2, out
    code, out = run("partitions")
    assert code == 0 and out["kind"] == "partitioned" and sum(p["rows"] for p in out["partitions"]) == 8
    code, err = run("partition-telemetry")  # once only
    assert code != 0 and "nothing to migrate" in err
