"""Rollouts on SQLite and PostgreSQL: waves, gates, pause/resume/promote/abort, timeouts, restart.

The reconciler runs against a real database with real command signatures; only the broker is
replaced by a recorder here (the end-to-end tests use a real mosquitto).
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import sqlalchemy as sa

from edgeops.errors import IllegalTransitionError
from edgeops.fleet.commands import CommandSender
from edgeops.fleet.config import IngestConfig, RolloutConfig
from edgeops.fleet.db import Database
from edgeops.fleet.ingest import Ingestor
from edgeops.fleet.registry import register_devices
from edgeops.fleet.rollouts import queries, service
from edgeops.fleet.rollouts import reconciler as reconciler_mod
from edgeops.fleet.rollouts.reconciler import Reconciler
from edgeops.fleet.rollouts.settings import RolloutSettingsError, parse_request
from edgeops.fleet.signing import KeyringCommandSigner
from edgeops.fleet.targets import UnknownBundleError, find_target
from edgeops.trust.keys import Keyring
from tests.fleet.helpers import RecordingPublisher, event, state, telemetry


class Harness:
    """Database + ingest + reconciler + a recorder standing in for the broker, and scripted devices."""

    def __init__(self, db: Database, fleet_repo, n: int = 20, tags=None, clock=None):
        self.db = db
        self.repo = fleet_repo["repo"]
        self.keys = Keyring.load(fleet_repo["keys"]).public_keys("command")
        self.pub = RecordingPublisher()
        self.signer = KeyringCommandSigner(fleet_repo["keys"])
        self.now = 1_000_000.0
        self.ingest = Ingestor(db, IngestConfig(flush_interval_s=0.01)).start()
        self.rec = self.make_reconciler()
        self.seq: dict[str, int] = {}
        self.handled = 0
        devices = [{"id": f"dev{i:03d}", "tags": tags or {"site": "berlin"}, "profile": "x86"} for i in range(n)]
        register_devices(db, devices)
        self.feed(*[state(d["id"], active="digits@1.0.0") for d in devices])

    def make_reconciler(self):
        return Reconciler(self.db, RolloutConfig(offline_timeout_s=60, assignment_timeout_s=600), CommandSender(self.signer, self.pub), self.repo, clock=lambda: self.now)

    def feed(self, *msgs):
        for topic, payload in msgs:
            self.ingest.submit(topic, payload)
        assert self.ingest.flush(30)

    def next_seq(self, d):
        self.seq[d] = self.seq.get(d, 0) + 1
        return self.seq[d]

    def respond(self, behaviour=lambda cmd: "good"):
        """Scripted devices answer every command published since the last call."""
        cmds = self.pub.commands(self.keys)[self.handled :]
        self.handled += len(cmds)
        for c in cmds:
            d = c.device_id
            target = f"{c.bundle.name}@{c.bundle.version}" if c.bundle else None
            if c.kind == "rollback":
                self.feed(event(d, self.next_seq(d), "rolled_back", c.command_id, target), state(d, active=target))
                continue
            how = behaviour(c)
            if how == "silent":
                continue
            self.feed(event(d, self.next_seq(d), "command_accepted", c.command_id, target, "already active" if how == "already" else ""))
            if how == "already":  # the agent answers an assignment of its active version with only this
                self.feed(state(d, active=target, state="idle"))
            elif how == "good":
                self.feed(
                    event(d, self.next_seq(d), "activated", c.command_id, target),
                    telemetry(d, self.next_seq(d), target, p95=5.0, agreement=1.0),
                    event(d, self.next_seq(d), "committed", c.command_id, target),
                    state(d, active=target, previous="digits@1.0.0"),
                )
            elif how == "nan":
                self.feed(
                    event(d, self.next_seq(d), "activated", c.command_id, target),
                    telemetry(d, self.next_seq(d), target, nans=100),
                    event(d, self.next_seq(d), "probation_failed", c.command_id, target, "nan gate"),
                    event(d, self.next_seq(d), "rolled_back", c.command_id, target),
                    state(d, active="digits@1.0.0"),
                )
        return cmds

    def create(self, **body):
        return service.create_rollout(self.db, parse_request({"bundle": "digits@2.0.0", **body}), self.repo, now=self.now)

    def assignments(self, rid):
        return {a["device_id"]: a for a in service.rollout_assignments(self.db, rid)}

    def close(self):
        self.ingest.stop()


@pytest.fixture
def h(db, fleet_repo):
    harness = Harness(db, fleet_repo)
    yield harness
    harness.close()


def test_find_target(fleet_repo):
    t = find_target(fleet_repo["repo"], "digits", "2.0.0")
    assert t.name == "digits/2.0.0/digits-2.0.0.bundle" and len(t.sha256) == 64 and t.length > 0 and t.release == 2
    with pytest.raises(UnknownBundleError, match="digits@9.9.9"):
        find_target(fleet_repo["repo"], "digits", "9.9.9")


def test_good_rollout_reaches_100_percent_in_waves(h):
    r = h.create(waves="10%,50%,100%", select="tag=site=berlin")
    assert r["status"] == "created" and [w["status"] for w in r["waves"]] == ["pending"] * 3
    service.start_rollout(h.db, r["id"])
    sizes = []
    for _ in range(10):
        h.rec.tick()
        h.respond()
        st = service.rollout_status(h.db, r["id"])
        if st["status"] == "finished":
            break
    st = service.rollout_status(h.db, r["id"])
    assert st["status"] == "finished", st
    sizes = [w["devices"] for w in st["waves"]]
    assert sizes == [2, 8, 10] and all(w["status"] == "passed" for w in st["waves"])
    assert st["succeeded"] == 20
    # every command carried the signed target exactly, with a per-device increasing seq
    t = find_target(h.repo, "digits", "2.0.0")
    cmds = h.pub.commands(h.keys)
    assert len(cmds) == 20 and len({c.device_id for c in cmds}) == 20
    assert all(c.kind == "assign" and c.target_name == t.name and c.target_sha256 == t.sha256 and c.target_length == t.length and c.seq == 1 for c in cmds)
    with h.db.connect() as conn:
        assert conn.execute(sa.select(sa.func.min(h.db.t.devices.c.cmd_seq))).scalar() == 1


def test_regressing_rollout_halts_in_first_wave(h):
    r = h.create(waves="10%,50%,100%", on_gate_failure="pause")
    service.start_rollout(h.db, r["id"])
    h.rec.tick()
    h.respond(lambda c: "nan")
    h.rec.tick()
    st = service.rollout_status(h.db, r["id"])
    assert st["status"] == "paused" and "max_failure_rate" in st["reason"]
    assert st["reason"].startswith("wave 1 halted: ") and st["waves"][0]["reason"].startswith("wave 1 halted: ")  # people count from 1
    assert [w["status"] for w in st["waves"]] == ["halted", "pending", "pending"]
    assigned = h.assignments(r["id"])
    assert len(assigned) == 2 and all(a["status"] == "rolled_back" and a["wave"] == 0 for a in assigned.values())
    for _ in range(3):
        h.rec.tick()
    assert len(h.assignments(r["id"])) == 2 and len(h.pub.messages) == 2  # nothing more was sent
    gates = {g["gate"]: g for g in st["waves"][0]["gates"]}
    assert gates["max_failure_rate"]["outcome"] == "fail" and gates["max_failure_rate"]["measured"] == 1.0


def test_abort_orders_every_device_back(h):
    r = h.create(waves="10%,50%,100%", on_gate_failure="abort", max_failure_rate=0.2)
    service.start_rollout(h.db, r["id"])
    h.rec.tick()
    h.respond()  # wave 0 (2 devices) good
    h.rec.tick()  # wave 1 starts: 8 devices
    h.respond(lambda c: "nan" if c.device_id in sorted(h.assignments(r["id"]))[:4] else "good")
    h.rec.tick()
    st = service.rollout_status(h.db, r["id"])
    assert st["status"] in ("aborted", "aborting"), st["reason"]
    rollbacks = [c for c in h.pub.commands(h.keys) if c.kind == "rollback"]
    assigned = h.assignments(r["id"])
    not_back = {d for d, a in assigned.items() if a["status"] != "rolled_back"}
    assert {c.device_id for c in rollbacks} == not_back and not_back
    for c in rollbacks:
        assert c.bundle.name == "digits" and c.bundle.version == "1.0.0" and c.target_name == "digits/1.0.0/digits-1.0.0.bundle"
        assert c.seq == 2  # above the assign command's seq on the same device
    h.respond()
    h.rec.tick()
    st = service.rollout_status(h.db, r["id"])
    assert st["status"] == "aborted" and [w["status"] for w in st["waves"]] == ["passed", "failed", "cancelled"]
    assert {a["status"] for a in h.assignments(r["id"]).values()} <= {"reverted", "rolled_back"}


def test_pause_resume_promote_and_approval(h):
    r = h.create(waves="10%,100%", approve_each_wave=True)
    rid = r["id"]
    with pytest.raises(IllegalTransitionError, match="cannot resume while created"):
        service.resume_rollout(h.db, rid)
    service.start_rollout(h.db, rid)
    with pytest.raises(IllegalTransitionError, match="cannot start while running"):
        service.start_rollout(h.db, rid)
    h.rec.tick()
    h.respond()
    h.rec.tick()
    assert service.rollout_status(h.db, rid)["status"] == "waiting_approval"
    h.rec.tick()
    assert len(h.assignments(rid)) == 2  # no new wave without approval
    service.pause_rollout(h.db, rid)
    h.rec.tick()
    assert len(h.assignments(rid)) == 2
    service.resume_rollout(h.db, rid)
    h.rec.tick()
    # resuming does not skip the approval the passed wave is waiting for
    st = service.rollout_status(h.db, rid)
    assert len(h.assignments(rid)) == 2 and st["status"] == "waiting_approval" and st["waves"][0]["status"] == "passed"
    service.promote_rollout(h.db, rid)
    h.rec.tick()
    h.respond()
    h.rec.tick()
    assert service.rollout_status(h.db, rid)["status"] == "finished"
    with pytest.raises(IllegalTransitionError):
        service.abort_rollout(h.db, rid)
    hist = service.rollout_status(h.db, rid, history=True)["history"]
    assert [x["action"] for x in hist][0] == "create" and "status:finished" in [x["action"] for x in hist]


def test_promote_overrides_a_halted_wave(h):
    r = h.create(waves="10%,100%")
    service.start_rollout(h.db, r["id"])
    h.rec.tick()
    h.respond(lambda c: "nan")
    h.rec.tick()
    assert service.rollout_status(h.db, r["id"])["status"] == "paused"
    service.promote_rollout(h.db, r["id"], actor="alice")
    h.rec.tick()
    st = service.rollout_status(h.db, r["id"])
    assert st["waves"][0]["status"] == "passed" and "alice" in st["waves"][0]["reason"] and st["waves"][1]["devices"] == 18


def test_offline_devices_time_out_as_failures(h):
    r = h.create(waves="50%,100%", max_failure_rate=0.5)
    service.start_rollout(h.db, r["id"])
    h.rec.tick()
    silent = sorted(h.assignments(r["id"]))[:6]
    h.respond(lambda c: "silent" if c.device_id in silent else "good")
    h.feed(*[state(d, active="digits@1.0.0", online=False, ts=1.0) for d in silent])
    with h.db.begin() as conn:  # they were last seen long ago
        conn.execute(h.db.t.devices.update().where(h.db.t.devices.c.id.in_(silent)).values(last_seen=h.now - 1000))
    h.rec.tick()
    assert {h.assignments(r["id"])[d]["status"] for d in silent} == {"sent"}  # not yet past the timeout
    h.now += 61
    h.rec.tick()
    a = h.assignments(r["id"])
    assert {a[d]["status"] for d in silent} == {"timed_out"} and "offline" in a[silent[0]]["detail"]
    st = service.rollout_status(h.db, r["id"])
    assert st["status"] == "paused" and "max_failure_rate" in st["reason"]  # 6/10 > 0.5


def test_devices_enrolled_during_rollout_join_next_wave(h):
    r = h.create(waves="10%,50%,100%", select="tag=site=berlin")
    service.start_rollout(h.db, r["id"])
    h.rec.tick()
    register_devices(h.db, [{"id": f"late{i}", "tags": {"site": "berlin"}} for i in range(10)])
    register_devices(h.db, [{"id": "other", "tags": {"site": "paris"}}])
    h.respond()
    h.rec.tick()  # wave 1: 50% of the 30 selected (10 enrolled late) = 15 cumulative
    a = h.assignments(r["id"])
    assert len(a) == math.ceil(0.5 * 30) and "other" not in a
    for _ in range(4):
        h.respond()
        h.rec.tick()
    a = h.assignments(r["id"])
    assert service.rollout_status(h.db, r["id"])["status"] == "finished"
    assert {f"late{i}" for i in range(10)} <= set(a) and "other" not in a and len(a) == 30


def test_restart_mid_rollout_resumes_without_reassigning(db, fleet_repo):
    h = Harness(db, fleet_repo)
    try:
        r = h.create(waves="10%,50%,100%")
        service.start_rollout(h.db, r["id"])
        h.rec.tick()
        h.respond()
        h.rec.tick()  # wave 1 assigned and sent
        before = h.assignments(r["id"])
        sent_before = len(h.pub.messages)
        # Crash: a fresh database handle and reconciler, as a restarted console has.
        db2 = Database(db.url, schema=db.schema)
        h.db = db2
        h.rec = h.make_reconciler()
        h.rec.db = db2
        h.rec.tick()
        assert h.assignments(r["id"]) == before and len(h.pub.messages) == sent_before
        for _ in range(5):
            h.respond()
            h.rec.tick()
        st = service.rollout_status(db2, r["id"])
        assert st["status"] == "finished"
        cmds = h.pub.commands(h.keys)
        assert len(cmds) == 20 and len({c.device_id for c in cmds}) == 20  # nobody assigned twice
        db2.dispose()
    finally:
        h.close()


def test_unsent_commands_are_sent_after_restart_with_same_id_and_seq(db, fleet_repo):
    h = Harness(db, fleet_repo)
    try:
        r = h.create(waves="10%,100%")
        service.start_rollout(h.db, r["id"])
        h.rec.sender = None  # the broker is unreachable: assignments stay pending
        h.rec.tick()
        pending = h.assignments(r["id"])
        assert len(pending) == 2 and {a["status"] for a in pending.values()} == {"pending"}
        h.rec = h.make_reconciler()
        h.rec.tick()
        a = h.assignments(r["id"])
        assert {x["status"] for x in a.values()} == {"sent"}
        cmds = h.pub.commands(h.keys)
        assert sorted((c.device_id, c.command_id, c.seq) for c in cmds) == sorted((d, x["command_id"], x["seq"]) for d, x in pending.items())
    finally:
        h.close()


def test_device_busy_in_another_rollout_is_skipped(h):
    r1 = h.create(waves="100%", select="device=dev000+dev001")
    service.start_rollout(h.db, r1["id"])
    h.rec.tick()
    r2 = h.create(waves="100%")
    service.start_rollout(h.db, r2["id"])
    h.rec.tick()
    a2 = h.assignments(r2["id"])
    assert "dev000" not in a2 and "dev001" not in a2 and len(a2) == 18


def test_already_active_device_succeeds_from_its_state(h):
    r = h.create(waves="100%", select="device=dev000+dev001")
    service.start_rollout(h.db, r["id"])
    h.rec.tick()
    h.respond(lambda c: "already")
    h.rec.tick()
    st = service.rollout_status(h.db, r["id"])
    assert st["status"] == "finished" and st["succeeded"] == 2


def test_reasons_and_history_number_waves_from_1(h):
    r = h.create(waves="10%,50%,100%", approve_each_wave=True)
    rid = r["id"]
    service.start_rollout(h.db, rid)
    h.rec.tick()
    h.respond()
    h.rec.tick()
    st = service.rollout_status(h.db, rid, history=True)
    assert st["status"] == "waiting_approval" and st["reason"] == "wave 1 passed; promote to start wave 2"
    assert [w["number"] for w in st["waves"]] == [1, 2, 3] and [w["idx"] for w in st["waves"]] == [0, 1, 2]
    actions = [x["action"] for x in st["history"]]
    assert "wave1:running" in actions and "wave1:passed" in actions and not any(a.startswith("wave0") for a in actions)
    service.pause_rollout(h.db, rid)
    assert "wave 1 passed and awaits approval" in service.resume_rollout(h.db, rid)["reason"]


def test_last_wave_takes_in_new_and_retagged_devices(h):
    register_devices(h.db, [{"id": "paris0", "tags": {"site": "paris"}}])
    r = h.create(waves="50%,100%", select="tag=site=berlin")
    rid = r["id"]
    service.start_rollout(h.db, rid)
    h.rec.tick()
    h.respond()
    h.rec.tick()  # the last wave starts: all 20 berlin devices; they do not answer yet
    assert len(h.assignments(rid)) == 20
    register_devices(h.db, [{"id": "late0", "tags": {"site": "berlin"}}, {"id": "late1", "tags": {"site": "berlin"}}])
    h.rec.tick()  # a new enrolment: joins at the next tick
    assert {"late0", "late1"} <= set(h.assignments(rid)) and "paris0" not in h.assignments(rid)
    register_devices(h.db, [{"id": "paris0", "tags": {"site": "berlin"}}])  # re-tagged: no new row
    h.rec.tick()
    assert "paris0" not in h.assignments(rid)  # the device table did not grow: no full read yet
    h.now += reconciler_mod.TOPUP_EVERY_S
    h.rec.tick()
    a = h.assignments(rid)
    assert "paris0" in a and a["paris0"]["wave"] == 1 and len(a) == 23
    for _ in range(3):
        h.respond()
        h.rec.tick()
    st = service.rollout_status(h.db, rid)
    assert st["status"] == "finished" and st["succeeded"] == 23


def _answer(h, p95, agreement=1.0):
    """Every new command: accepted, activated, telemetry on the new version, committed."""
    cmds = h.pub.commands(h.keys)[h.handled :]
    h.handled += len(cmds)
    for c in cmds:
        d, target = c.device_id, f"{c.bundle.name}@{c.bundle.version}"
        h.feed(
            event(d, h.next_seq(d), "command_accepted", c.command_id, target),
            event(d, h.next_seq(d), "activated", c.command_id, target),
            telemetry(d, h.next_seq(d), target, p95=p95, agreement=agreement),
            event(d, h.next_seq(d), "committed", c.command_id, target),
        )


def _old_version_telemetry(h, devices, p95=5.0, **kw):
    """Devices still on the old version report (the control's telemetry in the wave's window)."""
    h.feed(*[telemetry(d, h.next_seq(d), "digits@1.0.0", p95=p95, **kw) for d in devices])


def _not_in(h, rid, n=20):
    inside = set(h.assignments(rid))
    return [f"dev{i:03d}" for i in range(n) if f"dev{i:03d}" not in inside]


def test_telemetry_gates_judge_the_wave_against_the_control(h):
    """Wave 1 (10 devices) ten times slower than the 10 selected devices still on the old version
    over the same window: the latency gate fails with the test's numbers in the reason."""
    r = h.create(waves="50%,100%", max_latency_regression=1.1, max_error_rate=0.01, min_agreement=0.9)
    service.start_rollout(h.db, r["id"])
    h.rec.tick()
    assert len(h.assignments(r["id"])) == 10
    _answer(h, p95=50.0)
    _old_version_telemetry(h, _not_in(h, r["id"]))
    h.rec.tick()
    st = service.rollout_status(h.db, r["id"])
    assert st["status"] == "paused" and st["reason"].startswith("wave 1 halted: max_latency_regression 10 vs 1.1"), st["reason"]
    assert "Mann-Whitney p=" in st["reason"] and "10 new vs 10 control devices" in st["reason"]
    gates = {g["gate"]: g for g in st["waves"][0]["gates"]}
    assert gates["max_error_rate"]["outcome"] == "pass" and gates["min_agreement"]["outcome"] == "pass"
    judged = gates["max_latency_regression"]["judgement"][0]
    assert judged["p_value"] < judged["alpha"] == pytest.approx(0.01) and (judged["n_new"], judged["n_control"]) == (10, 10)
    from edgeops.fleet import metrics

    body = metrics.render(h.db, repo_dir=h.repo)[0].decode()
    labels = f'{{gate="max_latency_regression",rollout="{r["id"]}",wave="0"}}'
    assert f"edgeops_rollout_gate_looks{labels} 1.0" in body and f"edgeops_rollout_gate_inconclusive{labels} 0.0" in body
    p_line = next(line for line in body.splitlines() if line.startswith(f"edgeops_rollout_gate_p_value{labels} "))
    assert float(p_line.split()[-1]) == pytest.approx(judged["p_value"])


def test_wave_stats_read_telemetry_only_for_the_gates_that_use_it(h):
    _old_version_telemetry(h, [f"dev{i:03d}" for i in range(20)])
    selected = [f"dev{i:03d}" for i in range(6)]
    plain = h.create(waves="30%,100%", select="device=" + "+".join(selected))
    service.start_rollout(h.db, plain["id"])
    h.rec.tick()
    _answer(h, p95=50.0)
    with h.db.connect() as conn:
        r = queries.load_rollout(h.db, conn, plain["id"])
        wave = queries.load_wave(h.db, conn, r.id, 0)
    st = h.rec.wave_stats(r, wave)
    assert st.size == 2 and st.inferences == 0 and st.new_devices == [] and st.control_devices == []  # no telemetry gate: not read

    settings = r.settings.model_copy(update={"max_error_rate": 0.5, "max_latency_regression": 20.0})
    st = h.rec.wave_stats(r, wave, settings)
    members = sorted(h.assignments(r.id))
    assert sorted(d.device_id for d in st.new_devices) == members and {d.p95_ms for d in st.new_devices} == {50.0}
    # the control: the other selected devices (outside the rollout), on the old version, per device
    assert sorted(d.device_id for d in st.control_devices) == sorted(set(selected) - set(members)) and {d.p95_ms for d in st.control_devices} == {5.0}


def _rows_of_wave_1(h, rid):
    return [a for a in h.assignments(rid).values() if a["wave"] == 0]


def _with_body(msg, **changes):
    topic, payload = msg
    body = json.loads(payload)
    body.update(changes)
    return topic, json.dumps(body).encode()


def test_gate_and_metric_sums_stay_in_range_with_huge_counts_already_stored(h):
    """Issue 13 finding 3: rows stored before the bounds (inference_count 2^62) must not wedge the
    gates (SQLite's integer SUM overflows) nor drop the telemetry families from /metrics."""
    from edgeops.fleet import metrics

    r = h.create(waves="50%,100%", max_error_rate=0.5)
    service.start_rollout(h.db, r["id"])
    h.rec.tick()
    members = [a["device_id"] for a in _rows_of_wave_1(h, r["id"])]
    with h.db.begin() as conn:
        conn.execute(
            h.db.t.telemetry.insert(),
            [
                {"device_id": d, "seq": 10_000 + i, "ts_start": time.time() - 10, "ts_end": time.time(), "version_name": "digits", "version_version": "2.0.0", "state": "", "inference_count": 2**62, "error_count": 0, "nan_count": 0, "p95_ms": 5.0, "dropped_batches": 0, "received_at": time.time()}
                for i, d in enumerate(members)
            ],
        )
    _old_version_telemetry(h, _not_in(h, r["id"]))
    h.respond()
    h.rec.tick()
    st = service.rollout_status(h.db, r["id"])
    assert st["waves"][0]["status"] == "passed", st
    body = metrics.render(h.db, repo_dir=h.repo)[0].decode()
    assert 'edgeops_telemetry_inferences{bundle="digits",version="2.0.0"}' in body


def test_a_device_outside_the_selection_or_an_unpublished_version_cannot_join_the_control(h):
    """Issue 13 finding 4: one batch dated 10 years ahead from a device outside the rollout halted
    a good rollout; a version string no one published must not count either."""
    register_devices(h.db, [{"id": "paris0", "tags": {"site": "paris"}, "profile": "x86"}])
    r = h.create(waves="50%,100%", select="tag=site=berlin", max_latency_regression=1.1)
    service.start_rollout(h.db, r["id"])
    h.rec.tick()
    outside = _not_in(h, r["id"])
    _old_version_telemetry(h, outside)
    future = time.time() + 10 * 365 * 86400
    h.feed(
        _with_body(telemetry("paris0", 1, "digits@1.0.0", p95=0.01, inferences=10**9), ts_start=future - 10, ts_end=future),
        telemetry(outside[0], h.next_seq(outside[0]), "digits@0.0.1-unpublished", p95=0.01, inferences=10**9),
    )
    h.respond()  # the new version runs at 5 ms like the old one
    h.rec.tick()
    st = service.rollout_status(h.db, r["id"])
    gates = {g["gate"]: g for g in st["waves"][0]["gates"]}
    judged = gates["max_latency_regression"]["judgement"][0]
    assert st["waves"][0]["status"] == "passed" and gates["max_latency_regression"]["measured"] == pytest.approx(1.0), st
    assert judged["n_control"] == len(outside) == 10  # paris0 is not selected; the unpublished batch is not counted


def test_a_regression_counts_whatever_the_device_clock_says(h):
    """Issue 13 finding 4: the gates select telemetry by the console's receive clock, so a wave
    member whose clock says 1970 cannot hide its regression."""
    r = h.create(waves="50%,100%", max_latency_regression=1.1)
    service.start_rollout(h.db, r["id"])
    h.rec.tick()
    for a in _rows_of_wave_1(h, r["id"]):
        d = a["device_id"]
        h.feed(_with_body(telemetry(d, h.next_seq(d), "digits@2.0.0", p95=50.0), ts_start=990.0, ts_end=1000.0))
    _old_version_telemetry(h, _not_in(h, r["id"]))
    h.rec.tick()
    st = service.rollout_status(h.db, r["id"])
    assert st["status"] == "paused" and "max_latency_regression 10 vs 1.1" in st["reason"], st


def test_the_control_is_the_same_window_not_the_hour_before(h):
    """Old-version telemetry received before the wave began is not the control: with only that,
    the gate is inconclusive; once the control reports in the window, it decides."""
    r = h.create(waves="50%,100%", max_latency_regression=1.1)
    service.start_rollout(h.db, r["id"])
    h.rec.tick()
    outside = _not_in(h, r["id"])
    started = service.rollout_status(h.db, r["id"])["waves"][0]["started_at"]
    with h.db.begin() as conn:  # the control's telemetry from before the wave: received an hour earlier
        conn.execute(
            h.db.t.telemetry.insert(),
            [
                {"device_id": d, "seq": 50_000, "ts_start": started - 3610, "ts_end": started - 3600, "version_name": "digits", "version_version": "1.0.0", "state": "", "inference_count": 100, "error_count": 0, "nan_count": 0, "p95_ms": 50.0, "dropped_batches": 0, "received_at": started - 3600}
                for d in outside
            ],
        )
    h.respond()
    h.rec.tick()
    st = service.rollout_status(h.db, r["id"])
    gate = {g["gate"]: g for g in st["waves"][0]["gates"]}["max_latency_regression"]
    assert st["waves"][0]["status"] == "running" and gate["outcome"] == "inconclusive" and "10 new vs 0 control" in gate["detail"], gate
    _old_version_telemetry(h, outside)
    h.rec.tick()
    assert service.rollout_status(h.db, r["id"])["waves"][0]["status"] == "passed"


def test_silence_waits_then_pauses_as_inconclusive_and_a_restart_resumes_the_clock(h):
    """No telemetry at all: the telemetry gates are inconclusive, the wave waits (it does not
    pass on silence), and after inconclusive_timeout the rollout pauses with the reason. The
    time already spent is in the database: a new reconciler (a console restart) keeps it."""
    r = h.create(waves="50%,100%", max_latency_regression=1.1, min_agreement=0.9, inconclusive_timeout="10m")
    rid = r["id"]
    service.start_rollout(h.db, rid)
    h.rec.tick()
    h.respond(lambda c: "already")  # devices install and say nothing about inference
    h.rec.tick()
    st = service.rollout_status(h.db, rid)
    gates = {g["gate"]: g for g in st["waves"][0]["gates"]}
    assert st["status"] == "running" and st["waves"][0]["status"] == "running" and st["waves"][0]["reported"] == 10
    assert gates["max_latency_regression"]["outcome"] == "inconclusive" and gates["min_agreement"]["outcome"] == "inconclusive"
    assert gates["min_reporting"]["outcome"] == "pass"
    h.now += 300
    h.rec = h.make_reconciler()  # the console restarts
    h.rec.tick()
    assert service.rollout_status(h.db, rid)["status"] == "running"
    h.now += 300
    h.rec.tick()
    st = service.rollout_status(h.db, rid)
    assert st["status"] == "paused" and st["reason"].startswith("wave 1 inconclusive: max_latency_regression"), st["reason"]
    assert "inconclusive for 600s of 600s" in st["reason"] and st["waves"][0]["status"] == "halted"
    assert len(h.assignments(rid)) == 10  # no wave started on silence
    # resume: judged afresh (looks and timer start over)
    service.resume_rollout(h.db, rid, now=h.now)
    h.rec.tick()
    st = service.rollout_status(h.db, rid)
    gates = {g["gate"]: g for g in st["waves"][0]["gates"]}
    assert st["status"] == "running" and gates["min_agreement"]["since"] == h.now


def test_a_single_wave_holds_back_a_control_then_releases_it(h):
    """waves=100% would leave no device on the old version: the control share stays behind until
    the judged gates pass, then joins the wave, and the rollout finishes with every device."""
    r = h.create(waves="100%", max_latency_regression=1.1, control_share=0.25, judge_min_devices=5)
    rid = r["id"]
    service.start_rollout(h.db, rid)
    h.rec.tick()
    assert len(h.assignments(rid)) == 15  # 20 selected, 5 held back
    _answer(h, p95=5.0)
    _old_version_telemetry(h, _not_in(h, rid))
    h.rec.tick()
    st = service.rollout_status(h.db, rid)
    gate = {g["gate"]: g for g in st["waves"][0]["gates"]}["max_latency_regression"]
    assert gate["outcome"] == "pass" and gate["final"] and len(h.assignments(rid)) == 20 and st["status"] == "running"
    for _ in range(3):
        h.respond()
        h.rec.tick()
    st = service.rollout_status(h.db, rid)
    assert st["status"] == "finished" and st["succeeded"] == 20, st


def test_an_empty_last_wave_releases_the_control_and_finishes(h):
    """A small selection: the control held back is all the last wave would take, so the last
    wave has nothing on the new version to judge; the control joins it and every device ends up
    on the new version."""
    r = h.create(waves="75%,100%", max_latency_regression=1.1, control_share=0.25)
    rid = r["id"]
    service.start_rollout(h.db, rid)
    h.rec.tick()
    assert len(h.assignments(rid)) == 15
    _answer(h, p95=5.0)
    _old_version_telemetry(h, _not_in(h, rid))
    for _ in range(4):
        h.rec.tick()
        h.respond()
    st = service.rollout_status(h.db, rid)
    assert st["status"] == "finished" and st["succeeded"] == 20 and [w["devices"] for w in st["waves"]] == [15, 5], st


def _two_profiles(db, fleet_repo, arm=16, x86=40):
    """A harness with ``x86`` devices (profile x86) and ``arm`` more (profile arm), all on v1."""
    h = Harness(db, fleet_repo, n=x86)
    arms = [f"arm{i:03d}" for i in range(arm)]
    register_devices(db, [{"id": d, "tags": {"site": "berlin"}, "profile": "arm"} for d in arms])
    h.feed(*[state(d, active="digits@1.0.0") for d in arms])
    return h, [f"dev{i:03d}" for i in range(x86)] + arms


def _jitter(d: str) -> float:
    """Devices differ by a few percent (load, thermal state), the same on either version."""
    return 1 + 0.04 * ((sum(map(ord, d)) * 7) % 11 - 5) / 5


def _answer_by_profile(h, p95_of):
    cmds = h.pub.commands(h.keys)[h.handled :]
    h.handled += len(cmds)
    for c in cmds:
        d, target = c.device_id, f"{c.bundle.name}@{c.bundle.version}"
        h.feed(
            event(d, h.next_seq(d), "command_accepted", c.command_id, target),
            event(d, h.next_seq(d), "activated", c.command_id, target),
            telemetry(d, h.next_seq(d), target, p95=p95_of(d) * _jitter(d)),
            event(d, h.next_seq(d), "committed", c.command_id, target),
            state(d, active=target, previous="digits@1.0.0"),
        )


@pytest.mark.parametrize("arm_slowdown,ends", [(1.3, "paused"), (1.0, "finished")])
def test_a_regression_on_one_profile_halts_wave_1_naming_the_stratum(sqlite_db, fleet_repo, arm_slowdown, ends):
    """30% slower only on profile arm (8 of wave 1's 28 devices): pooled it would pass the 10%
    bound; judged per stratum, wave 1 halts naming profile=arm. The same rollout with no
    slowdown finishes with every device."""
    h, everyone = _two_profiles(sqlite_db, fleet_repo)
    try:
        r = h.create(waves="50%,100%", max_latency_regression=1.1)
        rid = r["id"]
        service.start_rollout(h.db, rid)
        h.rec.tick()
        wave1 = h.assignments(rid)
        assert len(wave1) == 28 and sum(d.startswith("arm") for d in wave1) == 8  # drawn in proportion
        for _ in range(6):
            _answer_by_profile(h, lambda d: 5.0 * (arm_slowdown if d.startswith("arm") else 1.0))
            outside = [d for d in everyone if d not in h.assignments(rid)]
            h.feed(*[telemetry(d, h.next_seq(d), "digits@1.0.0", p95=5.0 * _jitter(d)) for d in outside])
            h.rec.tick()
            if service.rollout_status(h.db, rid)["status"] != "running":
                break
        st = service.rollout_status(h.db, rid)
        assert st["status"] == ends, st["reason"]
        if ends == "paused":
            assert st["reason"].startswith("wave 1 halted: max_latency_regression") and "latency_p95[profile=arm]: fail" in st["reason"], st["reason"]
            judged = {j["metric"]: j for j in {g["gate"]: g for g in st["waves"][0]["gates"]}["max_latency_regression"]["judgement"]}
            assert judged["latency_p95"]["outcome"] == "pass" and judged["latency_p95[profile=x86]"]["outcome"] == "pass"
        else:
            assert st["succeeded"] == len(everyone) == 56
    finally:
        h.close()


def test_a_maintenance_window_delays_assignment_until_it_opens(h):
    """Berlin devices may be updated 02:00-04:00 UTC; paris devices have no window. At noon the
    wave takes everyone, paris gets its commands, berlin waits (shown in status and per device);
    when the window opens berlin gets commands with a fresh seq and expiry, and the rollout ends."""
    import datetime as dt

    from edgeops.fleet.command_seq import allocate_seqs

    register_devices(h.db, [{"id": f"paris{i}", "tags": {"site": "paris"}, "profile": "x86"} for i in range(2)])
    h.feed(*[state(f"paris{i}", active="digits@1.0.0") for i in range(2)])
    h.now = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc).timestamp()
    r = h.create(waves="100%", maintenance=["tag=site=berlin;0 2 * * *;2h;UTC"])
    rid = r["id"]
    service.start_rollout(h.db, rid)
    h.rec.tick()
    rows = h.assignments(rid)
    assert len(rows) == 22 and {c.device_id for c in h.pub.commands(h.keys)} == {"paris0", "paris1"}
    assert rows["dev000"]["status"] == "pending" and rows["dev000"]["detail"] == "waiting for its maintenance window (next opens 2026-12-05 02:00 UTC)"
    st = service.rollout_status(h.db, rid)
    assert st["waves"][0]["waiting_for_window"] == 20 and st["settings"]["maintenance"][0]["cron"] == "0 2 * * *"
    h.respond()
    h.now += 3600
    h.rec.tick()
    assert service.rollout_status(h.db, rid)["status"] == "running" and len(h.pub.commands(h.keys)) == 2
    old_seq = rows["dev000"]["seq"]
    with h.db.begin() as conn:  # another command reached dev000 meanwhile (a self-test): its seq moved on
        allocate_seqs(h.db, conn, ["dev000"])
    h.now = dt.datetime(2026, 12, 5, 2, 30, tzinfo=dt.timezone.utc).timestamp()
    h.rec.tick()
    cmds = {c.device_id: c for c in h.pub.commands(h.keys)}
    assert len(cmds) == 22 and cmds["dev000"].seq == old_seq + 2 and cmds["dev000"].expires == pytest.approx(h.now + h.rec.config.command_ttl_s)
    assert service.rollout_status(h.db, rid)["waves"][0]["waiting_for_window"] == 0
    for _ in range(3):
        h.respond()
        h.rec.tick()
    st = service.rollout_status(h.db, rid)
    assert st["status"] == "finished" and st["succeeded"] == 22, st["reason"]


def test_watch_after_the_last_wave_rolls_back_the_devices_of_a_late_failure(h):
    """--watch 30m: every wave passed (dev011 never answered: 19 of 20 reported, enough), the
    rollout keeps watching. dev003 rolls itself back after committing (1 of 20: within
    max_failure_rate 0.05), then dev011 times out (2 of 20: over it): the devices that reported
    the late failure are the affected ones. dev011, maybe still on the new version, gets a signed
    rollback order; dev003 is back already; both get the reason in their detail; the other 18
    stay on 2.0.0 and the rollout pauses saying so. Resumed, it watches again without counting
    the failures handled, and finishes."""
    r = h.create(waves="50%,100%", watch="30m", min_reporting=0.9)
    rid = r["id"]
    service.start_rollout(h.db, rid)
    for _ in range(4):
        h.rec.tick()
        h.respond(lambda c: "silent" if c.device_id == "dev011" else "good")
    h.rec.tick()
    st = service.rollout_status(h.db, rid)
    assert st["status"] == "watching" and st["reason"].startswith("last wave passed; watching until") and st["succeeded"] == 19, st
    h.now += 300
    h.feed(event("dev003", h.next_seq("dev003"), "rolled_back", None, "digits@2.0.0", "probation gate max_nan failed after commit"), state("dev003", active="digits@1.0.0"))
    h.rec.tick()
    assert service.rollout_status(h.db, rid)["status"] == "watching"  # 1 of 20 is within 0.05
    h.now += 700  # dev011's assignment times out
    h.rec.tick()
    st = service.rollout_status(h.db, rid)
    assert st["status"] == "paused" and st["reason"].startswith("late failure during the watch: max_failure_rate 0.1 vs 0.05"), st["reason"]
    assert "ordered back: dev011" in st["reason"] and "already back by themselves: dev003" in st["reason"] and "the other 18 devices stay on 2.0.0" in st["reason"]
    assert {c.device_id for c in h.pub.commands(h.keys) if c.kind == "rollback"} == {"dev011"}
    rows = h.assignments(rid)
    assert rows["dev011"]["status"] == "reverting" and rows["dev011"]["detail"].startswith("late failure during the watch: max_failure_rate")
    assert rows["dev003"]["status"] == "rolled_back" and rows["dev003"]["detail"].startswith("late failure during the watch")
    assert {d for d, row in rows.items() if row["status"] == "succeeded"} == {f"dev{i:03d}" for i in range(20)} - {"dev003", "dev011"}
    h.respond()  # dev011 confirms its rollback
    h.rec.tick()
    assert h.assignments(rid)["dev011"]["status"] == "reverted"
    service.resume_rollout(h.db, rid)
    h.rec.tick()
    assert service.rollout_status(h.db, rid)["status"] == "watching"  # the handled failures no longer count
    h.now += 1800
    h.rec.tick()
    assert service.rollout_status(h.db, rid)["status"] == "finished"


def test_watch_that_sees_no_failure_finishes(h):
    r = h.create(waves="100%", watch="10m")
    rid = r["id"]
    service.start_rollout(h.db, rid)
    for _ in range(3):
        h.rec.tick()
        h.respond()
    h.rec.tick()
    assert service.rollout_status(h.db, rid)["status"] == "watching"
    h.now += 599
    h.rec.tick()
    assert service.rollout_status(h.db, rid)["status"] == "watching"
    h.now += 1
    h.rec.tick()
    st = service.rollout_status(h.db, rid)
    assert st["status"] == "finished" and st["reason"] == "watched 600s after the last wave without a failure" and st["finished_at"] == h.now


def test_promotion_to_prod_without_staging_is_refused(h):
    """A rollout into channel prod that requires staging is refused until a rollout of the same
    version finished in staging; a staging rollout that did not finish does not count."""
    with pytest.raises(service.PromotionRefusedError, match=r"digits@2.0.0: promotion into channel prod refused: no rollout of this version finished in channel staging \(finished in: none\)"):
        h.create(waves="100%", channel="prod", requires_channel="staging")
    staging = h.create(waves="100%", select="device=dev000+dev001", channel="staging")
    service.start_rollout(h.db, staging["id"])
    h.rec.tick()
    with pytest.raises(service.PromotionRefusedError):  # running, not finished
        h.create(waves="100%", channel="prod", requires_channel="staging")
    h.respond()
    h.rec.tick()
    assert service.rollout_status(h.db, staging["id"])["status"] == "finished"
    prod = h.create(waves="100%", channel="prod", requires_channel="staging")
    assert prod["status"] == "created" and prod["settings"]["channel"] == "prod"
    with pytest.raises(RolloutSettingsError, match="promotion needs an earlier one"):
        h.create(channel="prod", requires_channel="prod")


def test_the_channels_a_version_was_published_to_decide_its_promotion(db, fleet_repo, tmp_path):
    """`edgeops publish --channel` signs the channel in the target: digits@2.0.0 published to
    staging then prod (prod requires staging, as the publisher signed it). A rollout without
    --channel goes to the last channel published (prod) and is refused until a rollout finished
    in staging; a channel the version was not published to is refused; once staging finished,
    prod is accepted with the requirement recorded."""
    import shutil

    from edgeops.trust.repository import Repository

    base = tmp_path / "base"
    shutil.copytree(fleet_repo["base"], base)  # the session's repository stays without channels
    ring = Keyring.load(base / "keys")
    repo = Repository(base / "repo")
    repo.publish(base / "digits-2.0.0.bundle", ring, channel="staging")
    assert repo.publish(base / "digits-2.0.0.bundle", ring, channel="prod").custom["channels"] == {"staging": None, "prod": "staging"}
    h = Harness(db, {"base": base, "keys": base / "keys", "repo": base / "repo"}, n=4)
    try:
        with pytest.raises(service.PromotionRefusedError, match=r"promotion into channel prod refused: no rollout of this version finished in channel staging \(finished in: none\)"):
            h.create(waves="100%")
        with pytest.raises(service.PromotionRefusedError, match=r"rollout into channel dev refused: the version is published in channel\(s\) prod, staging, not dev"):
            h.create(waves="100%", channel="dev")
        staging = h.create(waves="100%", select="device=dev000+dev001", channel="staging")
        assert (staging["settings"]["channel"], staging["settings"]["requires_channel"]) == ("staging", None)
        service.start_rollout(h.db, staging["id"])
        h.rec.tick()
        h.respond()
        h.rec.tick()
        assert service.rollout_status(h.db, staging["id"])["status"] == "finished"
        prod = h.create(waves="100%")
        assert (prod["settings"]["channel"], prod["settings"]["requires_channel"]) == ("prod", "staging")
    finally:
        h.close()


def _probs(rng, rows, top, favoured):
    """Softmax-like rows over 3 classes: class ``favoured(i)`` gets ``top`` of the mass."""
    out = np.full((rows, 3), 0.0)
    for i in range(rows):
        k = favoured(i)
        out[i] = (1 - top) / 2
        out[i, k] = top + rng.uniform(-0.02, 0.02)
        out[i] /= out[i].sum()
    return out


def _quality_batch(h, d, version, p50, top, favoured, rng):
    """A telemetry batch with a p50 and the drift sketch of a 3-class output (real Sketcher)."""
    from edgeops.protocol import TelemetryBatch, VersionRef, telemetry_topic
    from edgeops.sketch import Sketcher, make_layout

    layout = make_layout("probs", [_probs(np.random.default_rng(0), 200, 0.9, lambda i: i % 3)], classes=3)
    sk = Sketcher(layout)
    sk.add(_probs(rng, 60, top, favoured))
    name, ver = version.split("@")
    now = time.time()
    msg = TelemetryBatch(
        device_id=d, seq=h.next_seq(d), ts_start=now - 10, ts_end=now, active=VersionRef(name=name, version=ver), inference_count=60,
        latency_p50_ms=p50, latency_p95_ms=2 * p50, sketches={"probs": sk.state()},
    )
    return telemetry_topic(d), msg.to_json().encode()


@pytest.mark.parametrize("changed", [True, False])
def test_p50_confidence_and_class_mix_gates_read_what_devices_sent(h, changed):
    """Through the real ingest and database: wave 1 runs 40% slower at the median, less sure of
    its top-1 class and with its class mix shifted towards class 0, against the control on the
    old version over the same window; the three gates fail, each with its test in the detail.
    The same version without those changes passes them."""
    rng = np.random.default_rng(18)
    slower, top, favoured = (2.8, 0.6, lambda i: 0 if i % 2 else i % 3) if changed else (2.0, 0.9, lambda i: i % 3)
    r = h.create(waves="50%,100%", max_latency_p50_regression=1.1, max_confidence_drop=0.05, max_class_mix_shift=0.1)
    rid = r["id"]
    service.start_rollout(h.db, rid)
    h.rec.tick()
    cmds = h.pub.commands(h.keys)[h.handled :]
    h.handled += len(cmds)
    for c in cmds:
        d, target = c.device_id, f"{c.bundle.name}@{c.bundle.version}"
        h.feed(event(d, h.next_seq(d), "command_accepted", c.command_id, target), event(d, h.next_seq(d), "activated", c.command_id, target))
        h.feed(_quality_batch(h, d, target, slower * _jitter(d), top, favoured, rng))
        h.feed(event(d, h.next_seq(d), "committed", c.command_id, target))
    h.feed(*[_quality_batch(h, d, "digits@1.0.0", 2.0 * _jitter(d), 0.9, lambda i: i % 3, rng) for d in _not_in(h, rid)])
    h.rec.tick()
    st = service.rollout_status(h.db, rid)
    gates = {g["gate"]: g for g in st["waves"][0]["gates"]}
    if not changed:
        assert st["waves"][0]["status"] == "passed" and all(gates[g]["outcome"] == "pass" for g in ("max_latency_p50_regression", "max_confidence_drop", "max_class_mix_shift")), gates
        return
    assert st["status"] == "paused", st["reason"]
    p50, conf, mix = gates["max_latency_p50_regression"], gates["max_confidence_drop"], gates["max_class_mix_shift"]
    assert p50["outcome"] == "fail" and p50["measured"] == pytest.approx(1.4, abs=0.05) and "latency_p50" in p50["detail"], p50
    assert conf["outcome"] == "fail" and conf["measured"] < 0.8 and "top1_confidence" in conf["detail"] and conf["judgement"][0]["n_control"] == 10, conf
    assert mix["outcome"] == "fail" and mix["measured"] > 0.2 and "chi-square" in mix["detail"], mix


def test_a_console_restart_mid_judgement_keeps_the_looks(h):
    """The judged gate's looks live in the database: a new reconciler (a restarted console)
    continues at look 2 of 2 rather than starting the wave's alpha budget again."""
    r = h.create(waves="50%,100%", max_latency_regression=1.1, judge_max_looks=2, judge_look_interval="1m", bake="5m")
    rid = r["id"]
    service.start_rollout(h.db, rid)
    h.rec.tick()
    _answer(h, p95=5.0)
    _old_version_telemetry(h, _not_in(h, rid))
    h.rec.tick()
    gate = {g["gate"]: g for g in service.rollout_status(h.db, rid)["waves"][0]["gates"]}["max_latency_regression"]
    assert (gate["outcome"], gate["looks"], gate["final"]) == ("pass", 1, False)
    h.rec = h.make_reconciler()  # the console restarts
    h.now += 30
    h.rec.tick()  # within the interval: no look
    assert {g["gate"]: g for g in service.rollout_status(h.db, rid)["waves"][0]["gates"]}["max_latency_regression"]["looks"] == 1
    h.now += 30
    h.rec.tick()
    gate = {g["gate"]: g for g in service.rollout_status(h.db, rid)["waves"][0]["gates"]}["max_latency_regression"]
    assert (gate["looks"], gate["final"]) == (2, True) and "look 2 of 2 (final)" in gate["detail"]
