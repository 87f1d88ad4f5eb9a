"""One injected clock: every row the rollout path and one-off commands stamp carries the
caller's time (the reconciler's clock, a ``now``), and 0.0 is a time, not "missing"."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from edgeops.fleet.clock import resolve
from edgeops.fleet.commands import CommandSender, order_self_test
from edgeops.fleet.rollouts import service
from edgeops.fleet.rollouts.reconciler import Reconciler
from edgeops.fleet.rollouts.settings import parse_request
from tests.fleet.test_rollouts import Harness


class FakeClock:
    """A clock that moves one second per reading and remembers what it said."""

    def __init__(self, start: float):
        self.t = start
        self.said: set[float] = set()

    def __call__(self) -> float:
        self.t += 1.0
        self.said.add(self.t)
        return self.t


def _stamps(db, rollout_id: str) -> dict[str, list[float]]:
    """Every timestamp the rollout path wrote for one rollout (device-driven updates left out)."""
    t = db.t
    with db.connect() as conn:
        r = conn.execute(sa.select(t.rollouts).where(t.rollouts.c.id == rollout_id)).one()
        waves = conn.execute(sa.select(t.waves).where(t.waves.c.rollout_id == rollout_id)).all()
        assigned = conn.execute(sa.select(t.assignments).where(t.assignments.c.rollout_id == rollout_id)).all()
        audit = conn.execute(sa.select(t.audit.c.ts).where(t.audit.c.rollout_id == rollout_id)).scalars().all()
    return {
        "rollout": [r.created_at, r.started_at, r.finished_at, r.updated_at],
        "waves": [x for w in waves for x in (w.started_at, w.finished_at)],
        "assignments": [x for a in assigned for x in (a.created_at, a.sent_at)],
        "audit": list(audit),
    }


def test_resolve_keeps_zero():
    assert resolve(0.0, lambda: 99.0) == 0.0 and resolve(None, lambda: 99.0) == 99.0


@pytest.fixture
def h(sqlite_db, fleet_repo):
    harness = Harness(sqlite_db, fleet_repo, n=4)
    yield harness
    harness.close()


def test_a_clock_at_zero_is_used(h):
    """A console whose clock says 0.0 stamps 0.0 everywhere (``now or time.time()`` read the wall clock)."""
    h.now = 0.0
    h.rec = h.make_reconciler()
    r = h.create(waves="50%,100%")
    service.start_rollout(h.db, r["id"], now=0.0)
    for _ in range(4):
        h.rec.tick()
        h.respond()
    assert service.rollout_status(h.db, r["id"])["status"] == "finished"
    stamps = _stamps(h.db, r["id"])
    assert stamps["audit"] and stamps["assignments"] and stamps["waves"]
    assert {x for xs in stamps.values() for x in xs} == {0.0}, stamps


def test_the_injected_clock_stamps_every_rollout_row(h):
    """Operator actions take ``now``; the reconciler reads only its clock, in every call it makes."""
    clock = FakeClock(5000.0)
    h.rec = Reconciler(h.db, h.rec.config, h.rec.sender, h.repo, clock=clock)
    r = service.create_rollout(h.db, parse_request({"bundle": "digits@2.0.0", "waves": "50%,100%", "approve_each_wave": True}), h.repo, now=clock())
    service.start_rollout(h.db, r["id"], now=clock())
    h.rec.tick()
    h.respond()
    h.rec.tick()  # wave 1 passes: waiting for approval
    service.pause_rollout(h.db, r["id"], now=clock())
    service.resume_rollout(h.db, r["id"], now=clock())
    service.promote_rollout(h.db, r["id"], now=clock())
    h.rec.tick()
    h.respond(lambda c: "nan")
    h.rec.tick()  # wave 2 halts and pauses
    service.abort_rollout(h.db, r["id"], now=clock())
    h.rec.tick()
    h.respond()
    h.rec.tick()
    assert service.rollout_status(h.db, r["id"])["status"] == "aborted"
    stamps = _stamps(h.db, r["id"])
    written = {x for xs in stamps.values() for x in xs if x is not None}
    assert len(stamps["audit"]) >= 10 and written <= clock.said, sorted(written - clock.said)
    with h.db.connect() as conn:
        rb = conn.execute(sa.select(h.db.t.assignments.c.rollback_sent_at, h.db.t.assignments.c.rollback_expires).where(h.db.t.assignments.c.rollback_sent_at.is_not(None))).all()
    assert rb and all(sent in clock.said and exp - h.rec.config.command_ttl_s in clock.said for sent, exp in rb)


def test_a_self_test_order_uses_the_injected_clock(h):
    clock = FakeClock(7000.0)
    d = h.db.t.devices
    with h.db.begin() as conn:
        conn.execute(d.update().where(d.c.id == "dev000").values(profile="x86_64-avx512-vnni"))  # the test bundles' profile
    out = order_self_test(h.db, h.repo, CommandSender(h.signer, h.pub), "dev000", "digits@2.0.0", ttl_s=60.0, clock=clock)
    c = h.db.t.commands
    with h.db.connect() as conn:
        row = conn.execute(sa.select(c).where(c.c.command_id == out["command_id"])).one()
    assert row.created_at in clock.said and row.sent_at in clock.said and row.sent_at > row.created_at
    assert out["expires"] == row.created_at + 60.0 and h.pub.commands(h.keys)[-1].expires == out["expires"]
