"""The device side of `hil run --device`: a real Agent (real TUF client, store, onnxruntime)
answering signed ``self_test`` commands offline, and the report built from its answer.

The agent reads the repository through a DirectoryTransport and commands are submitted
directly; tests/edgeops/hil/test_hil_device.py runs the same path over MQTT with a console.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from edgeops.agent.config import parse_config
from edgeops.agent.core import Agent, AgentHooks
from edgeops.agent.selftest import cpu_mhz
from edgeops.agent.statefile import State
from edgeops.agent.system import temperature_c
from edgeops.hil.remote import report_from_event
from edgeops.hil.report import HilReport
from edgeops.protocol import MAX_SELF_TEST_RUNS, Command, VersionRef
from edgeops.trust.commands import sign_command, sign_payload
from edgeops.trust.transport import DirectoryTransport
from tests.agent.helpers import TrustFixture, agent_config_dict
from tests.support.bundles import sample_inputs

DEVICE = "hil-dev"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """good v1, good v2, v3 whose golden vectors the model does not reproduce, v4 for another profile, v5 tampered."""
    tf = TrustFixture(tmp_path_factory.mktemp("hil-trust"))
    tf.v1 = tf.publish("1.0.0", 1)
    tf.v2 = tf.publish("2.0.0", 2)
    tf.v3 = tf.publish("3.0.0", 3, golden_ok=False)
    tf.v4 = tf.publish("4.0.0", 4, profile="x86_64-avx2")
    tf.v5 = tf.publish("5.0.0", 5)
    target = tf.target_file(tf.v5)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the file no longer matches its signed sha256
    target.write_bytes(bytes(data))
    return tf


def command(tf, kind, pub, runs=None, seq=None) -> tuple[bytes, str]:
    cid = f"hil-{uuid.uuid4().hex[:8]}"
    fields = dict(
        device_id=DEVICE,
        command_id=cid,
        seq=seq if seq is not None else next(tf._seq),
        expires=time.time() + 600,
        kind=kind,
        target_name=pub.target_name,
        target_sha256=pub.sha256,
        target_length=pub.length,
        bundle=VersionRef(name=pub.name, version=pub.version, release=pub.release, sha256=pub.sha256),
        runs=runs,
    )
    cmd = Command(**fields)
    if runs is not None and runs > MAX_SELF_TEST_RUNS:  # sign a value the console would never sign: the agent must refuse it
        return sign_payload(json.dumps(cmd.to_dict(), sort_keys=True, separators=(",", ":")).encode(), tf.signer), cid
    return sign_command(cmd, tf.signer), cid


def events(agent) -> list[dict]:
    return [json.loads(m.payload) for m in agent.spool.pending(limit=10_000) if m.kind == "event"]


def answer(agent, cid) -> dict:
    found = [e for e in events(agent) if e["command_id"] == cid]
    assert len(found) == 1, f"expected one answer to {cid}: {[(e['kind'], e['command_id']) for e in events(agent)]}"
    return found[0]


@pytest.fixture
def serving_v1(tmp_path, repo):
    """An agent serving v1 (committed), recording its state transitions."""
    states: list[State] = []
    cfg = parse_config(agent_config_dict(tmp_path, repo, device_id=DEVICE))
    agent = Agent(cfg, session=None, transport=DirectoryTransport(repo.repo_dir), hooks=AgentHooks(on_state=states.append)).open()
    agent.submit(command(repo, "assign", repo.v1)[0])
    agent.tick()
    assert agent.run_until(lambda: agent.machine.settled, 60) and agent.persisted.state is State.COMMITTED
    agent.states = states
    yield agent
    agent.stop()


def assert_still_serving_v1(agent, states_before: int) -> None:
    assert agent.serving.manifest.version == "1.0.0"
    assert len(agent.states) == states_before, "a self-test must not move the install state machine"
    outputs, model = agent.infer({"input": sample_inputs(1)})
    assert model.manifest.version == "1.0.0" and outputs["probs"].shape == (1, 4)


def test_self_test_figures_carry_runs_p99_and_host_readings(serving_v1, repo):
    agent, n = serving_v1, len(serving_v1.states)
    env, cid = command(repo, "self_test", repo.v2, runs=37)
    agent.submit(env)
    agent.tick()
    e = answer(agent, cid)
    assert e["kind"] == "self_test_passed" and e["target"]["version"] == "2.0.0" and e["target"]["sha256"] == repo.v2.sha256
    f = json.loads(e["detail"])
    assert f["runs"] == 37 and f["timed_runs"] == 37
    assert 0 < f["latency_p50_ms"] <= f["latency_p95_ms"] <= f["latency_p99_ms"]
    assert f["latency_budget_p95_ms"] == 20.0 and f["profile"] == "x86_64-avx512-vnni" and f["runtime"] == "onnxruntime"
    assert f["load_s"] > 0 and f["memory_mb"] >= 0 and f["self_test_s"] > 0
    # the same readings as hil --local: numbers where this host exposes them, None where not
    here_mhz, here_temp = cpu_mhz(), temperature_c()
    assert (f["cpu_mhz"] is None) == (here_mhz is None) and (here_mhz is None or f["cpu_mhz"] > 0)
    assert (f["temperature_c"] is None) == (here_temp is None)
    assert {g["gate"] for g in e["gates"]} >= {"load", "golden", "errors", "latency_p95"}
    assert_still_serving_v1(agent, n)
    assert not agent.store.has(repo.v2.sha256), "the tested version is not kept"


def test_without_runs_the_agent_uses_its_config(serving_v1, repo):
    env, cid = command(repo, "self_test", repo.v2)
    serving_v1.submit(env)
    serving_v1.tick()
    assert json.loads(answer(serving_v1, cid)["detail"])["runs"] == 10  # self_test.latency_runs of the test config


def test_golden_mismatch_fails_and_keeps_serving(serving_v1, repo):
    agent, n = serving_v1, len(serving_v1.states)
    env, cid = command(repo, "self_test", repo.v3, runs=5)
    agent.submit(env)
    agent.tick()
    e = answer(agent, cid)
    assert e["kind"] == "self_test_failed"
    golden = next(g for g in e["gates"] if g["gate"] == "golden")
    assert golden["passed"] is False and golden["measured"] == 3.0
    assert json.loads(e["detail"])["passed"] is False
    assert_still_serving_v1(agent, n)
    assert repo.v3.sha256 not in agent.persisted.failed, "a self-test does not mark a version bad for assignments"


def test_wrong_profile_and_tampered_bundles_are_rejected(serving_v1, repo):
    agent, n = serving_v1, len(serving_v1.states)
    env4, cid4 = command(repo, "self_test", repo.v4)
    env5, cid5 = command(repo, "self_test", repo.v5)
    agent.submit(env4)
    agent.submit(env5)
    agent.tick()
    e4, e5 = answer(agent, cid4), answer(agent, cid5)
    assert e4["kind"] == "bundle_rejected" and "x86_64-avx2" in e4["detail"] and "x86_64-avx512-vnni" in e4["detail"]
    assert e5["kind"] == "bundle_rejected" and e5["target"]["version"] == "5.0.0"
    assert not list(agent.downloads_dir.glob("*.bundle")), "rejected downloads are removed"
    assert_still_serving_v1(agent, n)


def test_busy_device_refuses(serving_v1, repo):
    agent = serving_v1
    agent.submit(command(repo, "assign", repo.v2)[0])
    env, cid = command(repo, "self_test", repo.v2)
    agent.submit(env)
    agent.tick()  # the assignment is taken first: the agent is busy when the self-test arrives
    e = answer(agent, cid)
    assert e["kind"] == "command_rejected" and "busy" in e["detail"]


def test_runs_out_of_bounds_is_refused_by_the_agent(serving_v1, repo):
    before = serving_v1.counters["rejected_messages"]
    env, cid = command(repo, "self_test", repo.v2, runs=MAX_SELF_TEST_RUNS + 1)
    serving_v1.submit(env)
    serving_v1.tick()
    assert serving_v1.counters["rejected_messages"] == before + 1
    assert not [e for e in events(serving_v1) if e["command_id"] == cid]


# -- the report built from the answer ---------------------------------------------------------------
def _event(kind, gates=(), **figures):
    return {"kind": kind, "gates": list(gates), "detail": json.dumps({"command": "self_test", **figures}) if figures else "", "target": {"sha256": "ab" * 32}}


GOOD_GATES = [{"gate": "load", "passed": True, "measured": 0.01, "threshold": 60.0}, {"gate": "golden", "passed": True, "measured": 0.0, "threshold": 0.0}]
FIGS = dict(latency_p50_ms=1.0, latency_p95_ms=8.0, latency_p99_ms=9.0, latency_budget_p95_ms=10.0, runs=50, timed_runs=50, self_test_s=2.0, cpu_mhz=2400.0, temperature_c=None)


def test_report_checks_latency_against_the_budget_with_the_factor():
    r = report_from_event(HilReport("m@1", "device:d"), _event("self_test_passed", GOOD_GATES, **FIGS), latency_factor=1.0)
    assert r.passed and [c.name for c in r.checks] == ["bundle_integrity", "self_test.load", "self_test.golden", "latency_p95_budget"]
    lat = r.checks[-1]
    assert (lat.measured, lat.threshold) == (8.0, 10.0) and "p99 9.0" in lat.detail and "50 runs" in lat.detail
    assert r.figures["latency_p99_ms"] == 9.0 and r.figures["cpu_mhz"] == 2400.0 and "command" not in r.figures
    assert r.checks[1].seconds == pytest.approx(1.0)
    tight = report_from_event(HilReport("m@1", "device:d"), _event("self_test_passed", GOOD_GATES, **FIGS), latency_factor=0.5)
    assert not tight.passed and [c.name for c in tight.checks if not c.passed] == ["latency_p95_budget"]


@pytest.mark.parametrize("kind, check", [("command_rejected", "device_accepted"), ("bundle_rejected", "bundle_integrity"), ("install_failed", "bundle_install")])
def test_report_of_a_refusal_fails_the_named_check(kind, check):
    r = report_from_event(HilReport("m@1", "device:d"), {"kind": kind, "gates": [], "detail": "why not"})
    assert not r.passed and [(c.name, c.passed) for c in r.checks] == [(check, False)] and "why not" in r.checks[0].detail


def test_report_of_a_self_test_that_could_not_run_fails():
    r = report_from_event(HilReport("m@1", "device:d"), {"kind": "self_test_failed", "gates": [], "detail": "StoreError: gone"})
    assert not r.passed and r.checks[0].name == "self_test" and "StoreError" in r.checks[0].detail
