"""Retention of the tables that grow with every device message (fleet/console.py): drift sketches
go with telemetry's retention, device events after their own; newer rows stay. SQLite and
PostgreSQL."""

from __future__ import annotations

import time

import sqlalchemy as sa

from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole

DAY = 86400.0


def test_sketches_and_events_older_than_their_retention_are_removed(db, tmp_path):
    db.create_all()
    now = time.time()
    ages = {1: 40 * DAY, 2: 10 * DAY, 3: 1 * DAY, 4: 60.0}  # seq -> age
    with db.begin() as conn:
        conn.execute(db.t.sketches.insert(), [{"device_id": "d1", "seq": s, "version_name": "m", "version_version": "1", "rows": 1, "received_at": now - a, "body": "{}"}
                                              for s, a in ages.items()])
        conn.execute(db.t.events.insert(), [{"device_id": "d1", "seq": s, "kind": "installed", "ts": now - a, "received_at": now - a, "detail": "", "gates": "[]"}
                                            for s, a in ages.items()])
    config = config_from_dict({"database": {"url": str(db.engine.url.render_as_string(hide_password=False)), **({"schema": db.schema} if db.schema else {})},
                               "ingest": {"telemetry_retention_s": 7 * DAY, "event_retention_s": 30 * DAY},
                               "repository": {"dir": str(tmp_path / "repo"), "keys_dir": str(tmp_path / "keys")}})
    console = FleetConsole(config, db=db, mqtt=False, api=False, reconcile=False)
    assert console.prune_history() == {"sketches": 2, "events": 1}
    with db.connect() as conn:
        assert sorted(r[0] for r in conn.execute(sa.select(db.t.sketches.c.seq))) == [3, 4]
        assert sorted(r[0] for r in conn.execute(sa.select(db.t.events.c.seq))) == [2, 3, 4]
    assert console.prune_history() == {"sketches": 0, "events": 0}
