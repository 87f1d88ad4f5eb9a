"""Ingest on SQLite and PostgreSQL: storage, de-duplication, malformed and unknown-device counting."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa

from edgeops.fleet.config import IngestConfig
from edgeops.fleet.ingest import Ingestor, p95_from_histogram
from edgeops.fleet.registry import get_device, list_events, register_devices
from tests.fleet.helpers import event, state, telemetry


def feed(ing: Ingestor, *msgs):
    for topic, payload in msgs:
        ing.submit(topic, payload)
    assert ing.flush(30)


@pytest.fixture
def ingest(db):
    register_devices(db, [{"id": f"d{i}", "tags": {"site": "a"}} for i in range(3)])
    ing = Ingestor(db, IngestConfig(flush_interval_s=0.02)).start()
    yield ing
    ing.stop()


def test_state_updates_registry(db, ingest):
    feed(ingest, state("d0", active="digits@1.0.0", previous="digits@0.9.0", profile="x86", agent_version="0.1", last_command_seq=4))
    d = get_device(db, "d0")
    assert d["online"] and d["active"]["name"] == "digits" and d["active"]["version"] == "1.0.0"
    assert d["previous"] == {"name": "digits", "version": "0.9.0"} and d["profile"] == "x86" and d["reported_cmd_seq"] == 4
    assert d["last_seen"] is not None and d["tags"] == {"site": "a"}


def test_last_will_with_stale_versions_only_marks_offline(db, ingest):
    feed(ingest, state("d0", active="digits@2.0.0", ts=2000.0))
    feed(ingest, state("d0", active="digits@1.0.0", online=False, ts=1000.0))  # LWT composed at connect
    d = get_device(db, "d0")
    assert not d["online"] and d["active"]["version"] == "2.0.0"


def test_events_and_telemetry_deduplicated(db, ingest):
    e1 = event("d1", 1, "agent_started")
    e2 = event("d1", 2, "committed", target="digits@2.0.0")
    t1 = telemetry("d1", 7)
    feed(ingest, e1, e1, e2, t1, t1)  # redeliveries inside one batch
    feed(ingest, e2, t1)  # and across batches (a spool replay after reconnect)
    s = ingest.stats.snapshot()
    assert s["stored"] == {"events": 2, "telemetry": 1}
    assert s["duplicates"] == {"events": 2, "telemetry": 2}
    assert [e["seq"] for e in list_events(db, device_id="d1")] == [2, 1]
    with db.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(db.t.telemetry)).scalar() == 1
    assert get_device(db, "d1")["health"] == "healthy"


@pytest.mark.parametrize(
    "topic,payload,kind",
    [
        ("edgeops/v1/d0/events", b"not json", "events"),
        ("edgeops/v1/d0/events", b'{"device_id": "d0"}', "events"),
        ("edgeops/v1/d0/telemetry", json.dumps({"device_id": "d0", "seq": -1, "ts_start": 0, "ts_end": 1}).encode(), "telemetry"),
        ("edgeops/v1/d0/state", b"\xff\xfe", "state"),
        ("edgeops/v1/d0/state", state("d1")[1], "state"),  # body claims another device than the topic
        ("edgeops/v1/d0/telemetry", telemetry("d0", 1)[1].replace(b'"seq":1', b'"seq":1,"extra":true'), "telemetry"),
        ("edgeops/v2/d0/state", b"{}", "topic"),
        ("edgeops/v1/d0/bogus", b"{}", "topic"),
        ("edgeops/v1/bad id/state", b"{}", "topic"),
    ],
)
def test_malformed_counted_and_dropped(db, ingest, topic, payload, kind):
    feed(ingest, (topic, payload), event("d0", 1, "agent_started"))
    s = ingest.stats.snapshot()
    assert s["malformed"] == {kind: 1}
    assert s["stored"] == {"events": 1}  # the good message in the same batch still got through
    assert s["db_errors"] == 0


def test_unknown_devices_counted_and_dropped(db, ingest):
    feed(ingest, state("ghost"), event("ghost", 1, "agent_started"), telemetry("ghost", 1), event("d2", 1, "agent_started"))
    s = ingest.stats.snapshot()
    assert s["unknown_device"] == {"state": 1, "events": 1, "telemetry": 1}
    assert s["stored"] == {"events": 1}
    # enrolled later: picked up without restarting ingest
    register_devices(db, [{"id": "ghost"}])
    time.sleep(1.1)  # unknown ids are looked up again at most once a second
    feed(ingest, event("ghost", 2, "agent_started"))
    assert ingest.stats.snapshot()["stored"]["events"] == 2


def test_a_batch_of_unknown_devices_only_is_counted_without_a_refusal(db, ingest, caplog):
    """Every message of the batch from devices not enrolled (a fleet coming up): nothing to store,
    and no 'refused ... one by one' retry (an empty group was indexed: IndexError)."""
    caplog.set_level("INFO", logger="edgeops.fleet.ingest")
    now = time.time()
    ingest.process([("ghost", "state", state("ghost")[1], now), ("ghost2", "telemetry", telemetry("ghost2", 1)[1], now)])
    assert ingest.stats.snapshot()["unknown_device"] == {"state": 1, "telemetry": 1}
    assert not [r for r in caplog.records if "refused" in r.getMessage()]


def test_auto_register(db):
    ing = Ingestor(db, IngestConfig(auto_register=True, flush_interval_s=0.02)).start()
    try:
        feed(ing, state("newbie", active="digits@1.0.0", tags={"site": "b"}))
        assert get_device(db, "newbie")["tags"] == {"site": "b"}
    finally:
        ing.stop()


def test_volume_batched(db, ingest):
    register_devices(db, [{"id": f"v{i}"} for i in range(200)])
    msgs = [telemetry(f"v{i}", s) for i in range(200) for s in range(10)]
    feed(ingest, *msgs)
    s = ingest.stats.snapshot()
    assert s["stored"]["telemetry"] == 2000 and s["batches"] < 2000
    with db.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(db.t.telemetry)).scalar() == 2000


def test_p95_from_histogram():
    assert p95_from_histogram([1, 2, 5, 10], [0, 50, 40, 10, 0]) == 10
    assert p95_from_histogram([1, 2], [100, 0, 0]) == 1
    assert p95_from_histogram([1, 2], []) is None
    assert p95_from_histogram([1, 2], [1]) is None


def test_final_reports_count_only_events_that_can_end_an_assignment(db, ingest):
    feed(ingest, event("d0", 1, "command_accepted", "c1", "digits@2.0.0"), event("d0", 2, "activated", "c1", "digits@2.0.0"))
    assert ingest.final_reports == 0
    feed(ingest, event("d0", 3, "committed", "c1", "digits@2.0.0"), event("d1", 1, "probation_failed", "c2", "digits@2.0.0"))
    assert ingest.final_reports == 2
    feed(ingest, event("d0", 3, "committed", "c1", "digits@2.0.0"))  # a redelivery is not a new report
    assert ingest.final_reports == 2


def test_gather_takes_what_is_queued_up_to_a_batch_and_stops_when_nothing_comes(db):
    ing = Ingestor(db, IngestConfig())  # writer not started: the queue is ours
    for i in range(25):
        ing._queue.put(("d0", "telemetry", b"{}", 0.0, None))
    items: list = []
    ing._gather(items, 10)
    assert len(items) == 10
    items = []
    ing._gather(items, 100)
    assert len(items) == 15 and ing.queue_depth == 0  # the rest, then one empty poll ends the wait


def test_console_reconciles_soon_after_a_final_report(tmp_path, fleet_repo):
    from edgeops.fleet.config import config_from_dict
    from edgeops.fleet.console import FleetConsole

    cfg = config_from_dict(
        {
            "database": {"url": f"sqlite:///{tmp_path / 'fleet.db'}"},
            "repository": {"dir": str(fleet_repo["repo"]), "keys_dir": str(fleet_repo["keys"])},
            "base_dir": str(tmp_path),
        }
    )
    console = FleetConsole(cfg, mqtt=False, api=False, reconcile=False).start()
    try:
        register_devices(console.db, [{"id": "d0"}])
        feed(console.ingest, event("d0", 1, "activated", "c1", "digits@2.0.0"))
        assert not console._wake.is_set()  # nothing a wave could decide on
        feed(console.ingest, event("d0", 2, "committed", "c1", "digits@2.0.0"))
        assert console._wake.wait(5)  # the reconciler loop wakes (it keeps MIN_TICK_GAP_S between ticks)
    finally:
        console.stop()


def test_hil_self_test_failure_does_not_mark_the_device_unhealthy(db, ingest):
    """A candidate bundle failing `hil run --device` is the bundle's problem, not the device's."""
    from edgeops.fleet.commands import SELF_TEST_COMMAND_PREFIX

    feed(ingest, event("d2", 1, "committed", target="digits@1.0.0"))
    feed(ingest, event("d2", 2, "self_test_failed", command_id=f"{SELF_TEST_COMMAND_PREFIX}d2-abc", target="digits@9.0.0"))
    assert get_device(db, "d2")["health"] == "healthy"
    feed(ingest, event("d2", 3, "self_test_failed", command_id="assign-r1-d2", target="digits@2.0.0"))  # a rollout's
    assert get_device(db, "d2")["health"] == "unhealthy"


def _with(msg: tuple[str, bytes], **changes) -> tuple[str, bytes]:
    """The message with some body fields replaced (any JSON value, in or out of the schema's bounds)."""
    topic, payload = msg
    body = json.loads(payload)
    for key, value in changes.items():
        target = body
        *path, last = key.split("__")
        for part in path:
            target = target[part]
        target[last] = value
    return topic, json.dumps(body).encode()


@pytest.mark.parametrize(
    "msg",
    [
        _with(telemetry("d0", 1), seq=2**63),  # issue 13 finding 2: OverflowError on SQLite failed the whole batch
        _with(telemetry("d0", 1), inference_count=2**62),  # finding 3: sums over it overflowed the gates
        _with(telemetry("d0", 1), dropped_batches=2**31),  # an INTEGER column on PostgreSQL
        _with(telemetry("d0", 1), latency_counts=[2**40, 0]),
        _with(telemetry("d0", 1), ts_end=-1.0),
        _with(telemetry("d0", 1), latency_p95_ms=1e300),
        _with(telemetry("d0", 1), active__version="v" * 65),  # VARCHAR(64): PostgreSQL refuses it
        _with(state("d0"), last_command_seq=2**64),
        _with(state("d0", active="digits@1.0.0"), active__release=2**31),
        _with(state("d0"), profile="p" * 129),
        _with(state("d0"), tags={"k": "\u0000"}),  # PostgreSQL text cannot hold NUL
        _with(event("d0", 1, "installed"), detail="a\u0000b"),
        _with(event("d0", 1, "installed"), command_id="c" * 129),
    ],
    ids=["seq", "inference_count", "dropped_batches", "latency_counts", "ts_end", "p95", "version", "last_command_seq", "release", "profile", "tag_nul", "detail_nul", "command_id"],
)
def test_values_outside_the_bounds_are_malformed_and_the_batch_is_stored(db, ingest, msg):
    others = [telemetry(f"d{1 + i % 2}", i + 1) for i in range(50)]  # another device's messages in the same batch
    feed(ingest, msg, *others)
    s = ingest.stats.snapshot()
    kind = msg[0].rsplit("/", 1)[1]
    assert s["malformed"] == {kind: 1} and s["stored"] == {"telemetry": 50} and s["db_errors"] == 0, s


@pytest.fixture
def refuse_telemetry_seq_13(db):
    """A database that refuses one particular row (a trigger), standing for any value the schema
    lets through and the database still refuses."""
    with db.begin() as conn:
        if db.dialect == "sqlite":
            conn.exec_driver_sql("CREATE TRIGGER refuse_13 BEFORE INSERT ON telemetry WHEN NEW.seq = 13 BEGIN SELECT RAISE(ABORT, 'seq 13 refused'); END")
        else:
            fn = f'"{db.schema}".refuse_13'
            conn.exec_driver_sql(
                f"CREATE FUNCTION {fn}() RETURNS trigger AS $$ BEGIN IF NEW.seq = 13 THEN "
                "RAISE EXCEPTION 'seq 13 refused' USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(f'CREATE TRIGGER refuse_13 BEFORE INSERT ON "{db.schema}".telemetry FOR EACH ROW EXECUTE FUNCTION {fn}()')


def test_a_message_the_database_refuses_is_dropped_alone(db, refuse_telemetry_seq_13):
    register_devices(db, [{"id": f"d{i}"} for i in range(3)])
    ing = Ingestor(db, IngestConfig(flush_interval_s=0.02, db_retries=0)).start()
    try:
        batch = [telemetry("d0", 13)] + [telemetry(f"d{1 + i % 2}", 100 + i) for i in range(50)] + [event("d1", 1, "agent_started"), state("d2", active="digits@1.0.0")]
        feed(ing, *batch)
    finally:
        ing.stop()
    s = ing.stats.snapshot()
    assert s["stored"] == {"telemetry": 50, "events": 1, "state": 1}, s
    assert s["db_rejected"] == {"telemetry": {"integrity": 1}} and s["db_errors"] == 0
    with db.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(db.t.telemetry)).scalar() == 50
    assert get_device(db, "d2")["active"]["version"] == "1.0.0" and get_device(db, "d1")["last_seen"] is not None


def test_telemetry_is_placed_on_the_console_clock_and_device_skew_is_counted(db, ingest):
    ten_years = 10 * 365 * 86400.0
    before = time.time()
    feed(ingest, _with(telemetry("d0", 1), ts_start=time.time() + ten_years - 10, ts_end=time.time() + ten_years), telemetry("d1", 1))
    feed(ingest, _with(telemetry("d0", 2), ts_start=time.time() + ten_years - 10, ts_end=time.time() + ten_years))
    after = time.time()
    with db.connect() as c:
        rows = {(r.device_id, r.seq): r for r in c.execute(sa.select(db.t.telemetry))}
    assert all(before <= r.received_at <= after for r in rows.values())  # the console's clock
    assert rows["d0", 1].ts_end > before + ten_years - 60  # the device's own time kept as data
    assert ingest.stats.snapshot()["clock_skew"] == {"telemetry": 2}
    clock = get_device(db, "d0")["clock"]
    assert clock["skewed_messages"] == 2 and clock["last_skew_s"] == pytest.approx(ten_years, abs=60) and before <= clock["last_skewed_at"] <= after
    assert get_device(db, "d1")["clock"] == {"skewed_messages": 0, "last_skew_s": None, "last_skewed_at": None}


def test_telemetry_does_not_wait_for_a_device_row_another_replica_writes(db, ingest):
    """PostgreSQL: another replica's transaction holds d0's row; a telemetry batch of d0 and d1 is
    stored without waiting for it, d1's last seen and health move, d0's row is left to the holder
    (its next batch refreshes it), and last seen never moves back."""
    if db.dialect != "postgresql":
        pytest.skip("row locks: PostgreSQL (SQLite has one writer at a time)")
    from edgeops.fleet.db import Database

    other = Database(db.url, schema=db.schema)
    d = db.t.devices
    try:
        with other.begin() as held:
            held.execute(sa.select(d.c.id).where(d.c.id == "d0").with_for_update()).all()
            feed(ingest, telemetry("d0", 1), telemetry("d1", 1, nans=3))  # flush() would time out on a wait
            with db.connect() as c:
                assert c.execute(sa.select(sa.func.count()).select_from(db.t.telemetry)).scalar() == 2
        assert get_device(db, "d0")["last_seen"] is None and get_device(db, "d1")["health"] == "unhealthy"
        seen = get_device(db, "d1")["last_seen"]
        with db.begin() as c:  # a later value stays when an older batch comes last
            c.execute(d.update().where(d.c.id == "d1").values(last_seen=seen + 1000))
        feed(ingest, telemetry("d1", 2))
        assert get_device(db, "d1")["last_seen"] == seen + 1000
        feed(ingest, telemetry("d0", 2))  # the row is free again: the next batch refreshes it
        assert get_device(db, "d0")["last_seen"] is not None and get_device(db, "d0")["health"] == "healthy"
    finally:
        other.dispose()
