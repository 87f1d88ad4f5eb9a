"""The agent folds every served inference into the bundle's drift sketches and sends them in
its telemetry batch (issue 17): real agent, real onnxruntime, real store and spool, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeops import sketch as sk
from edgeops.agent.telemetry import TelemetryCollector
from edgeops.protocol import TelemetryBatch
from edgeops.agent.statefile import State
from tests.agent.helpers import TrustFixture
from tests.agent.test_machine import make_agent, settle
from tests.support.bundles import sample_inputs


@pytest.fixture(scope="module")
def monitored_repo(tmp_path_factory):
    tf = TrustFixture(tmp_path_factory.mktemp("trust"))
    tf.v1 = tf.publish("1.0.0", 1, reference=True)
    return tf


def _batches(agent) -> list[TelemetryBatch]:
    return [TelemetryBatch.parse_json(m.payload) for m in agent.spool.pending(limit=10_000) if m.kind == "telemetry"]


def test_served_inferences_are_sketched_per_interval_and_intervals_merge_exactly(tmp_path, monitored_repo):
    agent = make_agent(tmp_path, monitored_repo)
    try:
        agent.submit(monitored_repo.command("assign", monitored_repo.v1))
        assert settle(agent) is State.COMMITTED
        reference = agent.serving.manifest.monitoring
        assert reference is not None and set(reference.layouts) == {"input", "probs"}
        agent.flush_telemetry()  # close whatever probation ran (synthetic golden traffic is not sketched)
        first, second = sample_inputs(30, seed=11), sample_inputs(45, seed=12) + 0.5
        for x in first:
            agent.infer({"input": x[None]})
        agent.flush_telemetry()
        for i in range(0, len(second), 5):
            agent.infer({"input": second[i : i + 5]})
        agent.flush_telemetry()
        batches = _batches(agent)
        a, b = batches[-2].sketches, batches[-1].sketches
        assert a["input"].rows == 30 and b["input"].rows == 45
        assert a["probs"].rows == 30 and sum(b["probs"].class_counts) == 45
        # the device's states are what the sketch of the same inputs gives
        assert a["input"] == sk.sketch(reference.layouts["input"], [first])
        # two intervals merged = one interval over both (every field, sums included)
        both = sk.sketch(reference.layouts["input"], [first, second])
        assert sk.merge(a["input"], b["input"]) == both
        # the sketches travel inside the bounded protocol message, and drift shows on the shifted interval
        raw = [json.loads(m.payload) for m in agent.spool.pending(limit=10_000) if m.kind == "telemetry"][-1]
        assert TelemetryBatch.parse(raw).sketches == b
        assert sk.score(reference, b).p_value < 0.01 < sk.score(reference, a).p_value
    finally:
        agent.stop()


def test_a_tensor_the_reference_cannot_fold_is_skipped_never_failing_the_inference():
    rng = np.random.default_rng(0)
    ref = sk.build_reference("validation", {"image": [rng.random((4, 3, 8, 8))]}, {"y": [rng.random((4, 2))]}, channel_axes={"image": 1})
    c = TelemetryCollector(0.0)
    c.record(1.0, {"y": np.ones((1, 2))}, {"image": np.zeros((1, 5, 8, 7))}, ref)  # 5 channels of 56: cannot be 3
    c.record(1.0, {"y": np.ones((1, 2))}, {"image": rng.random((1, 3, 8, 8))}, ref)
    m = c.drain(1.0)
    assert c.sketch_errors == 1 and m.inference_count == 2
    assert m.sketches["image"].rows == 1 and m.sketches["y"].rows == 2


def test_collector_without_reference_sends_no_sketches():
    c = TelemetryCollector(0.0)
    c.record(1.0, {"probs": np.ones((1, 4), np.float32)}, {"input": np.zeros((1, 16), np.float32)}, None)
    assert c.drain(1.0).sketches == {}


def test_a_state_over_the_bounds_makes_the_batch_malformed():
    base = {"device_id": "d1", "seq": 1, "ts_start": 0.0, "ts_end": 1.0}
    ok = TelemetryBatch.parse({**base, "sketches": {"input": {"rows": 1, "hist": [[1, 0, 0]]}}})
    assert ok.sketches["input"].rows == 1
    from edgeops.schema import SchemaError

    for bad in (
        {"input": {"rows": 2**31}},
        {"input": {"rows": 1, "hist": [[0] * (sk.MAX_BINS + 3)]}},
        {"input": {"rows": 1, "sum": [float("inf")]}},
        {f"t{i}": {"rows": 1} for i in range(sk.MAX_TENSORS + 1)},
    ):
        with pytest.raises(SchemaError):
            TelemetryBatch.parse({**base, "sketches": bad})
