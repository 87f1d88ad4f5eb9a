"""One test per state transition of the install machine, on a real Agent (real trust layer,
real onnxruntime, real store), offline: commands are submitted directly and the repository
is read through a DirectoryTransport."""

from __future__ import annotations

import json

import pytest

from edgeops.agent.config import parse_config
from edgeops.agent.core import Agent, AgentHooks
from edgeops.agent.statefile import State
from edgeops.trust.transport import DirectoryTransport
from tests.agent.helpers import agent_config_dict
from tests.support.bundles import sample_inputs

TRIGGER = 100.0


def make_agent(tmp_path, tf, name="dev-1", hooks=None, transport=None, **sections) -> Agent:
    cfg = parse_config(agent_config_dict(tmp_path, tf, device_id=name, **sections))
    return Agent(cfg, session=None, transport=transport or DirectoryTransport(tf.repo_dir), hooks=hooks).open()


class Trace:
    """Records (from, to) transitions through the on_state hook."""

    def __init__(self):
        self.states: list[State] = []

    def __call__(self, state):
        self.states.append(state)

    def pairs(self, start=State.IDLE):
        seq = [start, *self.states]
        return list(zip(seq, seq[1:]))


def events(agent) -> list[dict]:
    return [json.loads(m.payload) for m in agent.spool.pending(limit=10_000) if m.kind == "event"]


def event(agent, kind) -> dict:
    found = [e for e in events(agent) if e["kind"] == kind]
    assert found, f"no {kind} event in {[e['kind'] for e in events(agent)]}"
    return found[-1]


def settle(agent, timeout=30) -> State:
    agent.tick()  # take queued commands first
    agent.run_until(lambda: agent.machine.settled, timeout)
    return agent.persisted.state


def committed_v1(tmp_path, tf, **kw) -> tuple[Agent, Trace]:
    trace = Trace()
    agent = make_agent(tmp_path, tf, hooks=AgentHooks(on_state=trace), **kw)
    agent.submit(tf.command("assign", tf.v1))
    assert settle(agent) is State.COMMITTED
    return agent, trace


def trigger_inputs():
    x = sample_inputs(1)
    x[0, 0] = TRIGGER * 5
    return {"input": x}


# -- the happy path: idle -> fetching -> ... -> committed --------------------------------------
HAPPY = [
    (State.IDLE, State.FETCHING),
    (State.FETCHING, State.VERIFYING),
    (State.VERIFYING, State.INSTALLING),
    (State.INSTALLING, State.SELF_TESTING),
    (State.SELF_TESTING, State.ACTIVATING),
    (State.ACTIVATING, State.PROBATION),
    (State.PROBATION, State.COMMITTED),
]


@pytest.fixture(scope="module")
def happy(tmp_path_factory, trust_repo):
    agent, trace = committed_v1(tmp_path_factory.mktemp("happy"), trust_repo)
    yield agent, trace
    agent.stop()


@pytest.mark.parametrize("transition", HAPPY, ids=[f"{a.value}->{b.value}" for a, b in HAPPY])
def test_happy_path_transition(happy, transition):
    agent, trace = happy
    assert transition in trace.pairs()
    frm, to = transition
    # Each transition leaves its mark.
    marks = {
        State.FETCHING: "command_accepted",
        State.VERIFYING: None,
        State.INSTALLING: None,
        State.SELF_TESTING: "installed",
        State.ACTIVATING: "self_test_passed",
        State.PROBATION: "activated",
        State.COMMITTED: "probation_passed",
    }
    if marks[to]:
        assert event(agent, marks[to])
    if to is State.COMMITTED:
        assert event(agent, "committed")
        assert agent.floor.get("digits") == 1
        assert agent.serving.manifest.version == "1.0.0"
        assert agent.store.current() == trust_repo_sha(agent, "1.0.0")


def trust_repo_sha(agent, version):
    return next(s for s in agent.store.versions() if agent.store.manifest(s).version == version)


def test_committed_to_fetching_on_new_assignment_then_previous_is_kept(tmp_path, trust_repo):
    agent, trace = committed_v1(tmp_path, trust_repo)
    agent.submit(trust_repo.command("assign", trust_repo.v2))
    assert settle(agent) is State.COMMITTED
    assert (State.COMMITTED, State.FETCHING) in trace.pairs()
    assert agent.serving.manifest.version == "2.0.0"
    assert agent.store.previous() == trust_repo.v1.sha256, "previous stays for a rollback order"
    agent.stop()


# -- failures before activation: X -> failed, the old version keeps serving ---------------------
def test_fetching_to_failed_on_assignment_mismatch(tmp_path, trust_repo):
    agent, trace = committed_v1(tmp_path, trust_repo)
    bad = type(trust_repo.v2)(**{**trust_repo.v2.__dict__, "length": trust_repo.v2.length + 1})
    agent.submit(trust_repo.command("assign", bad))
    assert settle(agent) is State.FAILED
    assert (State.FETCHING, State.FAILED) in trace.pairs()
    assert "AssignmentMismatchError" in event(agent, "bundle_rejected")["detail"]
    assert agent.serving.manifest.version == "1.0.0"
    agent.stop()


def test_fetching_to_failed_below_release_floor(tmp_path, trust_repo):
    agent, trace = committed_v1(tmp_path, trust_repo)
    agent.floor.raise_to("digits", 5)
    agent.submit(trust_repo.command("assign", trust_repo.v2))
    assert settle(agent) is State.FAILED
    assert "RollbackError" in event(agent, "bundle_rejected")["detail"]
    agent.stop()


def test_fetching_retries_then_fails_when_repository_unreachable(tmp_path, trust_repo, monkeypatch):
    from edgeops.trust.transport import HttpTransport

    monkeypatch.setattr(Agent, "wait_before_retry", lambda self, attempt: None)
    trace = Trace()
    agent = make_agent(tmp_path, trust_repo, hooks=AgentHooks(on_state=trace), transport=HttpTransport("http://127.0.0.1:9/", timeout_s=1))
    agent.submit(trust_repo.command("assign", trust_repo.v1))
    assert settle(agent) is State.FAILED
    assert agent.persisted.update.attempts == 3
    assert "unreachable" in event(agent, "install_failed")["detail"]
    assert agent.serving is None
    agent.stop()


def test_verifying_to_failed_on_tampered_download(tmp_path, trust_repo):
    def tamper(state, label):
        if state is State.VERIFYING and label == "start":
            p = agent.download_path(trust_repo.v2.sha256)
            data = bytearray(p.read_bytes())
            data[-2000] ^= 0xFF
            p.write_bytes(bytes(data))

    agent, trace = committed_v1(tmp_path, trust_repo)
    agent.hooks.checkpoint = tamper
    agent.submit(trust_repo.command("assign", trust_repo.v2))
    assert settle(agent) is State.FAILED
    assert (State.VERIFYING, State.FAILED) in trace.pairs()
    assert "HashMismatchError" in event(agent, "bundle_rejected")["detail"]
    assert not agent.download_path(trust_repo.v2.sha256).exists()
    assert agent.serving.manifest.version == "1.0.0"
    agent.stop()


def test_verifying_to_failed_for_another_profile(tmp_path, trust_repo):
    pub = trust_repo.publish("9.0.0", 9, profile="raspberry-pi-5")
    agent, trace = committed_v1(tmp_path, trust_repo)
    agent.submit(trust_repo.command("assign", pub))
    assert settle(agent) is State.FAILED
    assert "profile" in event(agent, "bundle_rejected")["detail"]
    assert agent.serving.manifest.version == "1.0.0"
    agent.stop()


def test_verifying_to_failed_when_store_is_full(tmp_path, trust_repo):
    """The space plan runs in the one verifying pass, as soon as the manifest is read: nothing is written."""
    agent, trace = committed_v1(tmp_path, trust_repo)
    agent.store.quota_bytes = agent.store.used_bytes() + 100
    agent.submit(trust_repo.command("assign", trust_repo.v2))
    assert settle(agent) is State.FAILED
    assert (State.VERIFYING, State.FAILED) in trace.pairs()
    assert not list(agent.store.root.glob(".staging-*"))
    assert "quota" in event(agent, "install_failed")["detail"]
    assert agent.serving.manifest.version == "1.0.0" and agent.infer({"input": sample_inputs(1)})
    agent.stop()


def test_self_testing_to_failed_marks_the_version_bad(tmp_path, trust_repo):
    pub = trust_repo.publish("3.0.0-badgolden", 30, golden_ok=False)
    agent, trace = committed_v1(tmp_path, trust_repo)
    agent.submit(trust_repo.command("assign", pub, command_id="cmd-bad"))
    assert settle(agent) is State.FAILED
    assert (State.SELF_TESTING, State.FAILED) in trace.pairs()
    e = event(agent, "self_test_failed")
    assert any(g["gate"] == "golden" and not g["passed"] for g in e["gates"])
    assert agent.persisted.failed[pub.sha256] == "cmd-bad"
    assert agent.serving.manifest.version == "1.0.0"
    # Refused while the same command is re-sent; a new command re-assigns it (failed -> fetching).
    agent.submit(trust_repo.command("assign", pub, command_id="cmd-bad"))
    agent.tick()
    assert "failed on this device" in event(agent, "command_rejected")["detail"]
    agent.submit(trust_repo.command("assign", pub, command_id="cmd-new"))
    agent.tick()
    assert (State.FAILED, State.FETCHING) in trace.pairs()
    assert settle(agent) is State.FAILED
    agent.stop()


# -- after the point of no return: rolling back -------------------------------------------------
def test_activating_to_rolling_back_on_error(tmp_path, trust_repo):
    def explode(state, label):
        if state is State.ACTIVATING and label == "swapped":
            raise RuntimeError("simulated failure after the swap")

    agent, trace = committed_v1(tmp_path, trust_repo)
    agent.hooks.checkpoint = explode
    agent.submit(trust_repo.command("assign", trust_repo.v2))
    assert settle(agent) is State.FAILED
    assert (State.ACTIVATING, State.ROLLING_BACK) in trace.pairs()
    assert (State.ROLLING_BACK, State.FAILED) in trace.pairs()
    assert agent.store.current() == trust_repo.v1.sha256 and agent.serving.manifest.version == "1.0.0"
    agent.stop()


@pytest.mark.parametrize("variant, gate", [("nan", "nan_outputs"), ("crash", "error_rate"), ("slow", "latency_p95")])
def test_probation_to_rolling_back_to_failed(tmp_path, trust_repo, variant, gate):
    pub = trust_repo.publish(f"4.0.0-{variant}", 40 + ["nan", "crash", "slow"].index(variant), variant=variant, trigger=TRIGGER, latency_p95_ms=1.5)
    agent, trace = committed_v1(tmp_path, trust_repo, probation={"window_count": 30, "window_seconds": 0.5})
    agent.submit(trust_repo.command("assign", pub))
    assert agent.run_until(lambda: agent.persisted.state is State.PROBATION, 30)
    # Live traffic that triggers the fault.
    for _ in range(40):
        if agent.persisted.state is not State.PROBATION:
            break
        try:
            agent.infer(trigger_inputs())
        except Exception:
            pass
        agent.tick()
    assert settle(agent) is State.FAILED
    assert (State.PROBATION, State.ROLLING_BACK) in trace.pairs() and (State.ROLLING_BACK, State.FAILED) in trace.pairs()
    rolled = event(agent, "rolled_back")
    failed = [g for g in rolled["gates"] if not g["passed"]]
    assert failed and failed[0]["gate"] == gate and failed[0]["measured"] is not None and failed[0]["threshold"] is not None
    assert event(agent, "probation_failed")["gates"]
    assert agent.serving.manifest.version == "1.0.0" and agent.store.current() == trust_repo.v1.sha256
    assert pub.sha256 in agent.persisted.failed and not agent.store.has(pub.sha256)
    agent.stop()


def test_rollback_command_after_commit_goes_rolling_back_to_idle(tmp_path, trust_repo):
    agent, trace = committed_v1(tmp_path, trust_repo)
    agent.submit(trust_repo.command("assign", trust_repo.v2))
    assert settle(agent) is State.COMMITTED
    agent.submit(trust_repo.command("rollback"))
    agent.tick()
    assert settle(agent) is State.IDLE
    assert (State.COMMITTED, State.ROLLING_BACK) in trace.pairs() and (State.ROLLING_BACK, State.IDLE) in trace.pairs()
    assert agent.serving.manifest.version == "1.0.0"
    assert trust_repo.v2.sha256 in agent.persisted.failed
    agent.stop()


def test_rollback_command_without_previous_is_refused(tmp_path, trust_repo):
    agent, _ = committed_v1(tmp_path, trust_repo)
    agent.submit(trust_repo.command("rollback"))
    agent.tick()
    assert "nothing to roll back to" in event(agent, "command_rejected")["detail"]
    assert agent.persisted.state is State.COMMITTED
    agent.stop()


def test_probation_restart_beyond_limit_rolls_back(tmp_path, trust_repo):
    """Recovery table: a crash in probation restarts the window; one more crash rolls back."""
    agent, _ = committed_v1(tmp_path, trust_repo)
    agent.config.probation.window_count, agent.config.probation.window_seconds = 10_000, 3600
    agent.config.probation.max_restarts = 1
    agent.submit(trust_repo.command("assign", trust_repo.v2))
    assert agent.run_until(lambda: agent.persisted.state is State.PROBATION, 30)
    cfg = agent.config
    for restart in (1, 2):
        agent = Agent(cfg, session=None, transport=DirectoryTransport(trust_repo.repo_dir)).open()  # as after a crash
        agent.tick()
        if restart == 1:
            assert agent.persisted.state is State.PROBATION and agent.persisted.update.probation_restarts == 1
    assert settle(agent) is State.FAILED
    assert event(agent, "probation_failed")["gates"][0]["gate"] == "agent_restarts"
    assert agent.serving.manifest.version == "1.0.0"


# -- commands --------------------------------------------------------------------------------
def test_unsigned_malformed_and_replayed_commands_are_counted_and_dropped(tmp_path, trust_repo):
    agent, _ = committed_v1(tmp_path, trust_repo)
    good = trust_repo.command("report")
    agent.submit(b"not json")
    agent.submit(json.dumps({"payload": "e30=", "payloadType": "x", "signatures": []}).encode())
    agent.submit(trust_repo.command("assign", trust_repo.v2, device_id="someone-else"))
    agent.submit(trust_repo.command("assign", trust_repo.v2, expires_in=-10))
    agent.submit(good)
    agent.submit(good)  # replay
    agent.tick()
    assert agent.counters["rejected_messages"] == 5
    assert agent.persisted.state is State.COMMITTED
    agent.flush_telemetry()
    batches = [json.loads(m.payload) for m in agent.spool.pending(limit=1000) if m.kind == "telemetry"]
    assert sum(b["rejected_messages"] for b in batches) == 5  # the report command flushed one batch in between
    agent.stop()


def test_self_test_command_reports_figures_without_activating(tmp_path, trust_repo):
    agent, trace = committed_v1(tmp_path, trust_repo)
    n = len(trace.states)
    agent.submit(trust_repo.command("self_test", trust_repo.v2))
    agent.tick()
    e = event(agent, "self_test_passed")
    figures = json.loads(e["detail"])
    assert figures["command"] == "self_test" and figures["latency_p95_ms"] > 0
    assert e["target"]["version"] == "2.0.0"
    assert len(trace.states) == n and agent.serving.manifest.version == "1.0.0"
    assert not agent.store.has(trust_repo.v2.sha256), "tested version is not kept"
    agent.stop()


def test_report_command_flushes_telemetry(tmp_path, trust_repo):
    agent, _ = committed_v1(tmp_path, trust_repo, telemetry={"interval_s": 3600})
    before = agent.spool.next_seq("telemetry")
    agent.infer({"input": sample_inputs(2)})
    agent.submit(trust_repo.command("report"))
    agent.tick()
    assert agent.spool.next_seq("telemetry") == before + 1
    batch = [json.loads(m.payload) for m in agent.spool.pending(limit=1000) if m.kind == "telemetry"][-1]
    assert batch["inference_count"] >= 1 and batch["active"]["version"] == "1.0.0" and batch["state"] == "committed"
    assert sum(batch["latency_counts"]) == batch["inference_count"] - batch["error_count"]
    assert "probs" in batch["outputs"]
    agent.stop()


def test_telemetry_interval_closes_when_the_served_version_changes(tmp_path, trust_repo):
    """Inferences served by v1 are never reported under v2 (the console compares versions by batches)."""
    agent, _ = committed_v1(tmp_path, trust_repo, telemetry={"interval_s": 3600})
    agent.flush_telemetry()  # v1's probation traffic goes in its own batch
    first_new = agent.spool.next_seq("telemetry")
    for _ in range(3):
        agent.infer({"input": sample_inputs(1)})
    agent.submit(trust_repo.command("assign", trust_repo.v2))
    assert settle(agent) is State.COMMITTED
    agent.infer({"input": sample_inputs(1)})
    agent.flush_telemetry()
    batches = [b for m in agent.spool.pending(limit=1000) if m.kind == "telemetry" and (b := json.loads(m.payload))["seq"] >= first_new]
    by_version: dict[str, int] = {}
    for b in batches:
        by_version[b["active"]["version"]] = by_version.get(b["active"]["version"], 0) + b["inference_count"]
    # v1 served 3 live inferences (plus any synthetic probation traffic counts under v2 only)
    assert by_version.get("1.0.0") == 3
    assert by_version.get("2.0.0", 0) >= 1
    agent.stop()
