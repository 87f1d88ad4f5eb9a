"""Batched acknowledgements (fleet/acks.py) and ingest's use of them: sent only after commit,
every ack of a batch in one call per connection, none while a commit fails."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from edgeops.fleet.acks import Ack, acknowledge
from edgeops.fleet.config import IngestConfig
from edgeops.fleet.ingest import Ingestor
from edgeops.fleet.registry import register_devices
from tests.fleet.helpers import event, state, telemetry


class Sender:
    """One connection's batch acknowledger: records each call's ids."""

    def __init__(self, on_send=None):
        self.calls: list[list[int]] = []
        self.on_send = on_send

    def __call__(self, mids: list[int]) -> None:
        if self.on_send:
            self.on_send(mids)
        self.calls.append(list(mids))


def test_acks_are_grouped_per_sender_in_order_and_other_callables_called():
    a, b, plain = Sender(), Sender(), []
    acknowledge([Ack(a, 3), Ack(b, 7), None, Ack(a, 1), lambda: plain.append("x"), Ack(a, 2), Ack(b, 8)])
    assert a.calls == [[3, 1, 2]] and b.calls == [[7, 8]] and plain == ["x"]


def test_a_single_ack_sends_its_id_alone():
    a = Sender()
    Ack(a, 42)()
    assert a.calls == [[42]]


def test_one_failing_sender_does_not_keep_the_others_from_sending():
    def broken(mids):
        raise OSError("gone")

    ok = Sender()
    with pytest.raises(OSError):
        acknowledge([Ack(broken, 1), Ack(ok, 2), Ack(ok, 3)])
    assert ok.calls == [[2, 3]]


def _stored(db) -> dict[str, int]:
    with db.connect() as c:
        return {
            "events": c.execute(sa.select(sa.func.count()).select_from(db.t.events)).scalar(),
            "telemetry": c.execute(sa.select(sa.func.count()).select_from(db.t.telemetry)).scalar(),
        }


def test_ingest_acknowledges_a_batch_once_committed_in_one_call_per_connection(sqlite_db):
    db = sqlite_db
    register_devices(db, [{"id": f"d{i}"} for i in range(3)])
    seen_at_ack: list[dict[str, int]] = []
    conn_a = Sender(on_send=lambda mids: seen_at_ack.append(_stored(db)))
    conn_b = Sender(on_send=lambda mids: seen_at_ack.append(_stored(db)))
    msgs = [telemetry(f"d{i % 3}", i) for i in range(40)] + [event("d1", 1, "agent_started"), state("d2", active="digits@1.0.0")]
    ing = Ingestor(db, IngestConfig(flush_interval_s=0.02, batch_size=1000))
    # queued before the writer starts: one batch holds them all
    for i, (topic, payload) in enumerate(msgs):
        ing.submit(topic, payload, Ack(conn_a if i % 2 == 0 else conn_b, 100 + i))
    ing.start()
    try:
        assert ing.flush(30)
    finally:
        ing.stop()
    assert conn_a.calls == [[100 + i for i in range(0, len(msgs), 2)]]
    assert conn_b.calls == [[100 + i for i in range(1, len(msgs), 2)]]
    # each connection was acknowledged after the batch was committed (another connection sees it)
    assert seen_at_ack == [{"events": 1, "telemetry": 40}] * 2


def test_ingest_sends_no_ack_while_the_commit_fails_and_all_once_it_succeeds(sqlite_db):
    db = sqlite_db
    register_devices(db, [{"id": "d0"}])
    failures = [1]  # the first commit fails as a database that went away would
    failed = threading.Event()
    sender = Sender()
    acks_at_failure: list[int] = []

    @sa.event.listens_for(db.engine, "commit")
    def _fail_once(conn):
        if failures[0]:
            failures[0] -= 1
            acks_at_failure.append(len(sender.calls))
            failed.set()
            raise sa.exc.OperationalError("COMMIT", {}, Exception("disk I/O error"))

    ing = Ingestor(db, IngestConfig(flush_interval_s=0.02, batch_size=1000))
    for seq in range(10):
        ing.submit(*telemetry("d0", seq), ack=Ack(sender, seq + 1))
    ing.start()
    try:
        assert failed.wait(30)
        assert ing.flush(30)
    finally:
        ing.stop()
    assert acks_at_failure == [0]
    assert sender.calls == [list(range(1, 11))]
    assert _stored(db)["telemetry"] == 10 and ing.stats.snapshot()["db_errors"] == 1
