"""Data capture on the device (issue 17): the signed capture policy and its refusals, the
triggers, sealing to the console's key, and the bounded spool with its drops reported.
Real agent, real onnxruntime, real signatures and SQLite; offline (the upload is tested in
tests/fleet/test_capture_e2e.py over a real broker)."""

from __future__ import annotations

import base64
import io
import json
import time
import uuid

import numpy as np
import pytest
from nacl.public import PrivateKey, SealedBox

from edgeops.protocol import CapturePolicy, CaptureTriggers, Command, TelemetryBatch
from edgeops.trust.commands import sign_command, sign_payload
from edgeops.trust.keys import Keyring
from tests.agent.test_machine import committed_v1, events
from tests.support.bundles import sample_inputs

KEY = PrivateKey.generate()
PUBLIC = base64.b64encode(bytes(KEY.public_key)).decode()


def policy(**kw) -> CapturePolicy:
    base = dict(policy_id="p1", until=time.time() + 3600, public_key=PUBLIC, budget_bytes_per_day=1 << 20, triggers=CaptureTriggers(random_share=1.0))
    base.update(kw)
    return CapturePolicy(**base)


def capture_command(tf, pol: CapturePolicy | None, device_id: str = "dev-1", expires_in: float = 3600, signer=None) -> bytes:
    cmd = Command(device_id=device_id, command_id=f"cap-{uuid.uuid4().hex[:8]}", seq=next(tf._seq), expires=time.time() + expires_in, kind="capture", capture=pol)
    return sign_command(cmd, signer or tf.signer)


def rejected(agent) -> list[str]:
    return [e["detail"] for e in events(agent) if e["kind"] == "command_rejected"]


def open_sample(blob: bytes) -> dict:
    with np.load(io.BytesIO(SealedBox(KEY).decrypt(blob)), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture
def agent(tmp_path, trust_repo):
    a, _ = committed_v1(tmp_path, trust_repo, capture={"max_budget_bytes_per_day": 1 << 20, "spool_max_bytes": 64 << 10})
    a.CAPTURE_REFUSAL_EVENT_S = 0.0  # one event per refusal in these tests
    yield a
    a.stop()


def serve(agent, n: int, seed: int = 3) -> np.ndarray:
    x = sample_inputs(n, seed=seed)
    for row in x:
        agent.infer({"input": row[None]})
    return x


def test_capture_is_off_by_default_and_a_signed_policy_turns_it_on_sealed_to_the_console(agent, trust_repo):
    serve(agent, 3)
    assert agent.capture_spool.count() == 0  # off by default
    agent.submit(capture_command(trust_repo, policy()))
    agent.tick()
    assert any("capture on: policy p1" in e["detail"] for e in events(agent) if e["kind"] == "command_accepted")
    x = serve(agent, 3)
    samples = agent.capture_spool.oldest(10)
    assert len(samples) == 3
    for s in samples:
        assert x[0].tobytes() not in s.blob and x[0][:4].tobytes() not in s.blob  # sealed: no plaintext input bytes
    first = open_sample(samples[0].blob)
    np.testing.assert_array_equal(first["in/input"], x[0][None])
    meta = json.loads(first["meta"].tobytes())
    assert meta["trigger"] == "random" and meta["model"]["version"] == "1.0.0" and meta["device_id"] == "dev-1" and meta["policy_id"] == "p1"
    assert "out/probs" in first
    # a policy with enabled false turns it off again
    agent.submit(capture_command(trust_repo, policy(enabled=False)))
    agent.tick()
    serve(agent, 2)
    assert agent.capture_spool.count() == 3 and agent.capturer.active() is None


def test_capture_turned_off_while_a_sample_is_sealed_spools_nothing(agent, trust_repo, monkeypatch):
    """An inference whose sample is being sealed when the off command is applied is not captured:
    once the agent took "capture off", nothing more reaches the spool (the demo saw one such frame
    reach the console after its labels were written)."""
    from edgeops.agent import capture as capture_module

    agent.submit(capture_command(trust_repo, policy()))
    agent.tick()
    real_seal = capture_module.seal
    off_applied = []

    def seal_while_the_off_command_lands(key, plaintext):
        if not off_applied:
            agent.submit(capture_command(trust_repo, policy(enabled=False)))
            agent.tick()  # the command thread's work, run here between the trigger check and the spool
            off_applied.append(agent.capturer.active())
        return real_seal(key, plaintext)

    monkeypatch.setattr(capture_module, "seal", seal_while_the_off_command_lands)
    serve(agent, 1)
    assert off_applied == [None]  # the off command was applied mid-capture
    assert agent.capture_spool.count() == 0 and agent.capturer.total_captured == 0
    serve(agent, 2)
    assert agent.capture_spool.count() == 0


def test_low_confidence_trigger(agent, trust_repo):
    agent.submit(capture_command(trust_repo, policy(triggers=CaptureTriggers(min_confidence=1e-6))))
    agent.tick()
    serve(agent, 4)
    assert agent.capture_spool.count() == 0  # no top-1 probability is that low
    agent.submit(capture_command(trust_repo, policy(triggers=CaptureTriggers(min_confidence=1.0))))
    agent.tick()
    serve(agent, 4)
    assert agent.capture_spool.count() == 4
    assert json.loads(open_sample(agent.capture_spool.oldest(1)[0].blob)["meta"].tobytes())["trigger"] == "low_confidence"


def test_unsigned_capture_policy_refused_counted_and_reported(agent, trust_repo, tmp_path):
    other = Keyring.create(tmp_path / "other-keys", root_keys=1, root_threshold=1).signers("command")[0]
    before = agent.counters["rejected_messages"]
    agent.submit(capture_command(trust_repo, policy(), signer=other))
    agent.tick()
    assert agent.counters["rejected_messages"] == before + 1
    assert agent.capturer.active() is None
    assert any("capture refused: CommandSignatureError" in d for d in rejected(agent))


def test_expired_command_and_expired_policy_refused(agent, trust_repo):
    agent.submit(capture_command(trust_repo, policy(), expires_in=-5))
    agent.submit(capture_command(trust_repo, policy(until=time.time() - 60)))
    agent.tick()
    details = rejected(agent)
    assert any("CommandExpiredError" in d for d in details)
    assert any("capture policy p1 expired" in d for d in details)
    assert agent.capturer.active() is None and agent.counters["rejected_messages"] >= 2


def test_policy_for_another_device_refused(agent, trust_repo):
    agent.submit(capture_command(trust_repo, policy(), device_id="dev-2"))
    agent.tick()
    assert any("WrongDeviceError" in d and "dev-2" in d for d in rejected(agent))
    assert agent.capturer.active() is None


def test_malformed_policies_refused(agent, trust_repo):
    # signed, but the policy does not validate (a public key that is no key): refused before it is read
    cmd = Command(device_id="dev-1", command_id="cap-bad", seq=next(trust_repo._seq), expires=time.time() + 60, kind="capture", capture=policy())
    doc = json.loads(json.dumps(cmd.to_dict(exclude={"runs"}), sort_keys=True))
    doc["capture"]["public_key"] = "not-a-key"
    agent.submit(sign_payload(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), trust_repo.signer))
    # signed and valid, but a capture command without its policy
    agent.submit(capture_command(trust_repo, None))
    agent.tick()
    details = rejected(agent)
    assert any("MalformedCommandError" in d for d in details)
    assert any("capture command without a policy" in d for d in details)
    assert agent.capturer.active() is None


def test_policy_over_the_device_budget_refused_and_the_daily_budget_enforced(agent, trust_repo):
    agent.submit(capture_command(trust_repo, policy(budget_bytes_per_day=(1 << 20) + 1)))
    agent.tick()
    assert any("over this device's capture.max_budget_bytes_per_day" in d for d in rejected(agent))
    assert agent.capturer.active() is None
    # a budget of about two samples a day: the third and later are skipped and counted
    agent.submit(capture_command(trust_repo, policy(budget_bytes_per_day=1200)))
    agent.tick()
    serve(agent, 6)
    stored = agent.capture_spool.count()
    assert 1 <= stored < 6
    agent.flush_telemetry()
    batch = [TelemetryBatch.parse_json(m.payload) for m in agent.spool.pending(limit=1000) if m.kind == "telemetry"][-1]
    assert batch.captured == stored and batch.capture_over_budget == 6 - stored


def test_spool_bounded_drops_oldest_and_reports_the_drop(agent, trust_repo):
    agent.submit(capture_command(trust_repo, policy()))
    agent.tick()
    x = sample_inputs(400, seed=5)
    big = np.repeat(x[:, None, :], 1, axis=1)
    for row in big:
        agent.infer({"input": row})
    spool = agent.capture_spool
    assert spool.size_bytes() <= spool.max_bytes
    kept = spool.oldest(1000)
    assert 0 < len(kept) < 400
    newest = open_sample(kept[-1].blob)["in/input"]
    np.testing.assert_array_equal(newest, big[-1])  # the newest is kept, the oldest went
    agent.flush_telemetry()
    batch = [TelemetryBatch.parse_json(m.payload) for m in agent.spool.pending(limit=1000) if m.kind == "telemetry"][-1]
    assert batch.captured == 400 and batch.capture_dropped == 400 - len(kept)
    assert any(e["kind"] == "capture_dropped" and f"dropped the oldest {400 - len(kept)} sample" in e["detail"] for e in events(agent))
    assert spool.dropped() == 0  # reported once


def test_policy_survives_a_restart(tmp_path, trust_repo):
    a, _ = committed_v1(tmp_path, trust_repo)
    a.submit(capture_command(trust_repo, policy(policy_id="kept")))
    a.tick()
    a.stop()
    from tests.agent.test_machine import make_agent

    b = make_agent(tmp_path, trust_repo)
    try:
        assert b.capturer.active().policy_id == "kept"
        serve(b, 2)
        assert b.capture_spool.count() == 2
    finally:
        b.stop()


def test_drift_trigger_captures_only_while_the_interval_drifts(tmp_path):
    from tests.agent.helpers import TrustFixture
    from tests.agent.test_machine import make_agent, settle
    from edgeops.agent.statefile import State

    tf = TrustFixture(tmp_path / "trust")
    tf.v1 = tf.publish("1.0.0", 1, reference=True)
    agent = make_agent(tmp_path, tf)
    try:
        agent.submit(tf.command("assign", tf.v1))
        assert settle(agent) is State.COMMITTED
        agent.flush_telemetry()
        agent.submit(capture_command(tf, policy(triggers=CaptureTriggers(drift="alert", min_samples=50, alpha=0.01))))
        agent.tick()
        agent.capturer.clock = iter(range(10**6)).__next__  # the drift check runs at most once a (clock) second: every offer here
        for row in sample_inputs(120, seed=31):  # data like the reference: no capture
            agent.infer({"input": row[None]})
        assert agent.capture_spool.count() == 0
        agent.flush_telemetry()
        for row in sample_inputs(120, seed=32) + 3.0:  # a brighter camera: captured once the interval scores alert
            agent.infer({"input": row[None]})
        n = agent.capture_spool.count()
        assert 0 < n < 120  # not before min_samples inferences gave a readable score
        assert json.loads(open_sample(agent.capture_spool.oldest(1)[0].blob)["meta"].tobytes())["trigger"] == "drift_alert"
    finally:
        agent.stop()


def test_nonfinite_trigger(tmp_path):
    from tests.agent.helpers import TrustFixture
    from tests.agent.test_machine import make_agent, settle
    from edgeops.agent.statefile import State
    from tests.support.bundles import N_FEATURES

    tf = TrustFixture(tmp_path / "trust")
    tf.v1 = tf.publish("1.0.0", 1, trigger=100.0, variant="nan")
    agent = make_agent(tmp_path, tf, probation={"max_nan": 1000})
    try:
        agent.submit(tf.command("assign", tf.v1))
        assert settle(agent) is State.COMMITTED
        agent.submit(capture_command(tf, policy(triggers=CaptureTriggers(nonfinite=True))))
        agent.tick()
        serve(agent, 5)
        assert agent.capture_spool.count() == 0
        x = np.full((1, N_FEATURES), 500.0, np.float32)
        agent.infer({"input": x})
        assert agent.capture_spool.count() == 1
        s = open_sample(agent.capture_spool.oldest(1)[0].blob)
        assert json.loads(s["meta"].tobytes())["trigger"] == "nonfinite" and not np.all(np.isfinite(s["out/probs"]))
    finally:
        agent.stop()


def test_shadow_disagreement_trigger_during_probation(tmp_path):
    from tests.agent.helpers import TrustFixture
    from tests.agent.test_machine import make_agent, settle
    from edgeops.agent.statefile import State

    tf = TrustFixture(tmp_path / "trust")
    tf.v1 = tf.publish("1.0.0", 1)
    tf.v2 = tf.publish("2.0.0", 2, seed=5)  # other weights: some inputs get another class
    agent = make_agent(tmp_path, tf)
    try:
        agent.submit(tf.command("assign", tf.v1))
        assert settle(agent) is State.COMMITTED
        # v2's probation stays open while the test serves (no synthetic traffic, a long window)
        p = agent.config.probation
        p.window_count, p.window_seconds, p.synthetic_interval_s, p.min_agreement = 10_000, 600.0, 0.0, 0.0
        agent.config.api.shadow_sample_rate = 0.0  # the policy alone makes the shadow run on live inputs
        agent.submit(tf.command("assign", tf.v2))
        agent.run_until(lambda: agent.persisted.state is State.PROBATION, 30)
        assert agent.persisted.state is State.PROBATION
        agent.submit(capture_command(tf, policy(triggers=CaptureTriggers(shadow_disagreement=True))))
        agent.tick()
        x = sample_inputs(60, seed=41)
        for row in x:
            agent.infer({"input": row[None]})
        samples = [open_sample(s.blob) for s in agent.capture_spool.oldest(100)]
        assert 0 < len(samples) < 60  # the shadow ran on every live input (shadow_sample_rate 0) and only disagreements were kept
        for s in samples:
            assert json.loads(s["meta"].tobytes())["trigger"] == "shadow_disagreement"
            old = agent._shadow.runtime.run({"input": s["in/input"]})
            assert int(np.argmax(next(iter(old.values())))) != int(np.argmax(s["out/probs"]))
    finally:
        agent.stop()
