"""The simulator's runtimes: the real model on a shared session, the golden lookup, and faults."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edgeops.agent.config import SelfTestConfig
from edgeops.agent.runtimes import InferenceError
from edgeops.agent.selftest import run_self_test
from edgeops.bundle import extract_bundle
from edgeops.fleet.simulator.faults import parse_faults
from edgeops.fleet.simulator.runtime import SharedModels
from tests.support.bundles import write_test_bundle


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Two installs of the same good bundle (two devices' stores) and one of the NaN model."""
    base = tmp_path_factory.mktemp("rt")
    out = {}
    for key, variant in (("a", "good"), ("b", "good"), ("nan", "nan")):
        bundle = base / f"{key}.bundle"
        manifest = write_test_bundle(bundle, version="2.0.0" if variant == "good" else "3.0.0", variant=variant)
        files = base / key
        extract_bundle(bundle, files)
        out[key] = (files, manifest)
    return out


def golden_cases(files):
    from edgeops.golden import GoldenVectors

    return GoldenVectors.from_json_bytes((files / "golden.json").read_bytes()).cases


def make(models, installed, key, spec=""):
    files, manifest = installed[key]
    return models.runtime_factory(parse_faults(spec).for_device("dev-x"))(files / manifest.artifact, manifest, [], 1)


def test_onnx_runtime_is_the_model_and_is_shared(installed):
    models = SharedModels("onnx")
    a, b = make(models, installed, "a"), make(models, installed, "b")
    assert models.loads == 1  # same artifact sha256: one session for both devices
    for inputs, expected in golden_cases(installed["a"][0]):
        np.testing.assert_allclose(a.run(inputs)["probs"], expected["probs"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b.run(inputs)["probs"], expected["probs"], rtol=1e-4, atol=1e-5)


def test_a_regression_in_the_model_itself_shows(installed):
    rt = make(SharedModels("auto"), installed, "nan")
    inputs, _ = golden_cases(installed["nan"][0])[0]
    assert np.isnan(rt.run(inputs)["probs"]).all()


def test_golden_runtime_returns_the_nearest_case(installed):
    rt = make(SharedModels("golden"), installed, "a")
    cases = golden_cases(installed["a"][0])
    for inputs, expected in cases:
        noisy = {"input": inputs["input"] + np.float32(1e-3)}
        np.testing.assert_array_equal(rt.run(noisy)["probs"], expected["probs"])


def test_nan_and_crash_hit_live_inputs_only_by_default(installed):
    models = SharedModels("onnx")
    files, manifest = installed["a"]
    golden = golden_cases(files)
    live = models.traffic("k", lambda: __import__("edgeops.golden", fromlist=["GoldenVectors"]).GoldenVectors(cases=golden))[0]
    nan = make(models, installed, "a", "nan:1@digits=2.0.0")
    assert np.isfinite(nan.run(golden[0][0])["probs"]).all()
    assert np.isnan(nan.run(live)["probs"]).all()
    crash = make(models, installed, "a", "crash:1@digits=2.0.0")
    crash.run(golden[0][0])
    with pytest.raises(InferenceError, match="simulated crash"):
        crash.run(live)
    with pytest.raises(InferenceError):
        make(models, installed, "a", "crash(all):1").run(golden[0][0])
    assert np.isnan(make(models, installed, "a", "nan(all):1").run(golden[0][0])["probs"]).all()
    # another version is not affected
    assert np.isfinite(make(models, installed, "a", "nan:1@digits=9.*").run(live)["probs"]).all()


def test_slow_fault_fails_the_real_self_test_latency_gate(installed):
    files, manifest = installed["a"]  # latency budget 20 ms
    models = SharedModels("onnx")
    ok = run_self_test(files, manifest, SelfTestConfig(latency_runs=3), models.runtime_factory(parse_faults("").for_device("d")), [], 1)
    assert ok.passed
    factory = models.runtime_factory(parse_faults("slow(x3):1@digits=2.0.0").for_device("d"))
    t0 = time.perf_counter()
    report = run_self_test(files, manifest, SelfTestConfig(latency_runs=3, latency_factor=1.5), factory, [], 1)
    assert time.perf_counter() - t0 >= 0.06 * 3
    gate = {g.gate: g for g in report.gates}["latency_p95"]
    assert not report.passed and not gate.passed and gate.measured >= 59.0 and gate.threshold == 30.0


def test_traffic_is_near_the_golden_inputs(installed):
    from edgeops.golden import GoldenVectors

    files, _ = installed["a"]
    cases = golden_cases(files)
    traffic = SharedModels().traffic("sha", lambda: GoldenVectors(cases=cases))
    assert len(traffic) == 8
    for i, x in enumerate(traffic):
        base = cases[i % len(cases)][0]["input"]
        assert x["input"].dtype == base.dtype and x["input"].shape == base.shape
        assert not np.array_equal(x["input"], base) and np.allclose(x["input"], base, atol=0.1)


@pytest.mark.skipif(__import__("importlib").util.find_spec("openvino") is None, reason="openvino not installed (pip install 'edgeops[agent,openvino]')")
def test_openvino_bundles_run_their_ir_in_openvino_shared_and_with_faults(tmp_path):
    """auto picks OpenVINO for an OpenVINO bundle: the IR's own outputs (a NaN model shows NaN),
    one compiled model for two devices, and the simulator's faults on top."""
    from tests.support.openvino_bundles import write_openvino_test_bundle

    ov = {}
    good, nan = tmp_path / "good.bundle", tmp_path / "nan.bundle"
    write_openvino_test_bundle(good, "2.0.0", 2)
    write_openvino_test_bundle(nan, "3.0.0", 3, variant="nan")
    for key, bundle in (("a", good), ("b", good), ("nan", nan)):  # two devices' stores of one bundle
        ov[key] = (tmp_path / key, extract_bundle(bundle, tmp_path / key))
    models = SharedModels("auto")
    a, b = make(models, ov, "a"), make(models, ov, "b")
    assert models.loads == 1
    for inputs, expected in golden_cases(ov["a"][0]):
        np.testing.assert_allclose(a.run(inputs)["probs"], expected["probs"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b.run(inputs)["probs"], expected["probs"], rtol=1e-4, atol=1e-5)
    assert np.isnan(make(models, ov, "nan").run(golden_cases(ov["nan"][0])[0][0])["probs"]).all()
    with pytest.raises(InferenceError, match="simulated crash"):
        make(SharedModels("openvino"), ov, "a", "crash(all):1").run(golden_cases(ov["a"][0])[0][0])
