"""The reconciler's reads: each rollout read once per tick, gate inputs read only for the gates
configured, and a gate reading a new kind of data added without touching the reconciler."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from edgeops.fleet.rollouts import gates as gates_mod, queries, service
from edgeops.fleet.rollouts.gates import Outcome, Verdict, gate, inputs_needed, wave_input
from edgeops.fleet.rollouts.settings import build_settings
from tests.fleet.test_rollouts import Harness


@pytest.fixture
def h(sqlite_db, fleet_repo):
    harness = Harness(sqlite_db, fleet_repo, n=10)
    yield harness
    harness.close()


@pytest.fixture
def registry(monkeypatch):
    """The gate and input registries, restored after the test."""
    for name in ("GATES", "GATE_SPECS", "INPUTS"):
        monkeypatch.setattr(gates_mod, name, dict(getattr(gates_mod, name)))
    return gates_mod


def _statements(db, run) -> list[str]:
    seen: list[str] = []

    def record(conn, cursor, statement, *args):
        seen.append(statement)

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        run()
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)
    return seen


def test_each_rollout_is_read_once_per_tick(h):
    rollouts = [h.create(waves="20%,100%", select=f"device={'+'.join(f'dev{i:03d}' for i in range(k * 5, k * 5 + 5))}") for k in range(2)]
    for r in rollouts:
        service.start_rollout(h.db, r["id"])
    for _ in range(3):  # first waves start, devices answer, gates pass, next waves start
        statements = _statements(h.db, h.rec.tick)
        reads = [s for s in (" ".join(x.split()) for x in statements) if s.startswith("SELECT") and " FROM rollouts" in s]
        assert len(reads) == 1, reads
        h.respond()
    assert {service.rollout_status(h.db, r["id"])["status"] for r in rollouts} == {"finished"}


def test_inputs_are_read_only_for_configured_gates(registry):
    plain = build_settings(bundle_name="m", bundle_version="2")
    assert inputs_needed(plain) == []
    assert inputs_needed(plain.model_copy(update={"max_error_rate": 0.1})) == ["cohorts"]
    assert inputs_needed(plain.model_copy(update={"max_latency_regression": 2.0, "min_agreement": 0.9})) == ["cohorts"]

    @gate("broken", reads=("nobody_provides_this",))
    def broken(s, cfg):
        return None

    with pytest.raises(KeyError, match="gate broken reads input 'nobody_provides_this'"):
        inputs_needed(plain)


def test_a_gate_reading_new_data_is_a_provider_and_a_gate(h, registry):
    """A gate on data no built-in input reads (here: how many of the wave's devices accepted
    their command, from the events table) needs no change in the reconciler."""
    calls = []

    @wave_input("accepted_events")
    def accepted_events(src):
        calls.append(src.wave.idx)
        ev, a = src.db.t.events, src.db.t.assignments
        members = sa.select(a.c.device_id).where(a.c.rollout_id == src.rollout.id, a.c.wave_idx == src.wave.idx)
        n = src.conn.execute(sa.select(sa.func.count()).select_from(ev).where(ev.c.kind == "command_accepted", ev.c.device_id.in_(members))).scalar()
        return {"accepted_events": n}

    @gate("wants_two_accepts", reads=("accepted_events",), when=lambda cfg: cfg.bake_s == 0)
    def wants_two_accepts(s, cfg):
        n = s.extra["accepted_events"]
        return Verdict("wants_two_accepts", Outcome.PASS if n >= 2 else Outcome.WAIT, n, 2, f"{n} accepted")

    r = h.create(waves="20%,100%")
    service.start_rollout(h.db, r["id"])
    h.rec.tick()  # wave 1 starts: 2 devices
    h.respond(lambda c: "silent")  # they say nothing
    h.rec.tick()
    st = service.rollout_status(h.db, r["id"])
    gates = {g["gate"]: g for g in st["waves"][0]["gates"]}
    assert st["waves"][0]["status"] == "running" and gates["wants_two_accepts"]["outcome"] == "wait" and calls == [0]
    with h.db.connect() as conn:
        rollout = queries.load_rollout(h.db, conn, r["id"])
        wave = queries.load_wave(h.db, conn, r["id"], 0)
    assert h.rec.wave_stats(rollout, wave, rollout.settings.model_copy(update={"bake_s": 5.0})).extra == {}  # not configured: not read
    assert calls == [0]


def test_waves_draw_each_stratum_in_proportion():
    from edgeops.fleet.rollouts.reconciler import stratified_order

    devices = [(f"x{i:03d}", "x86", '{"site": "a"}') for i in range(80)] + [(f"r{i:03d}", "arm", '{"site": "b"}') for i in range(20)]
    order = stratified_order("r-1", devices, None)
    ranked = sorted(order, key=order.get)
    for k in (10, 30, 50):
        arm = sum(d.startswith("r") for d in ranked[:k])
        assert abs(arm - k * 0.2) <= 1, (k, arm)
    # a strata tag splits further
    mixed = [(f"x{i:03d}", "x86", '{"site": "%s"}' % ("a" if i % 4 else "b")) for i in range(80)]
    order = stratified_order("r-1", mixed, "site")
    first = sorted(order, key=order.get)[:20]
    assert sum(int(d[1:]) % 4 == 0 for d in first) == 5  # site b is a quarter of the selection
