"""The demo's parts on their own: the injected model fault, the camera, profile choice, the CLI's checks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from edgeops.demo import camera, host, model
from edgeops.demo.fleet import agent_config
from edgeops.errors import ConfigError


def tiny_onnx(path):
    """A one-Conv classifier [N,1,4,4] -> [N,10] (no torch needed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(10, 1, 4, 4)).astype(np.float32), "w")
    # a clear winner class keeps int8 top-1 agreement at 1.0 on random inputs (packager gate)
    b = numpy_helper.from_array(np.array([0, 0, 0, 20, 0, 0, 0, 0, 0, 0], dtype=np.float32), "b")
    shape = numpy_helper.from_array(np.array([-1, 10], dtype=np.int64), "shape")
    g = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["c"]), helper.make_node("Reshape", ["c", "shape"], ["output_0"])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["N", 10])],
        [w, b, shape],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(path))
    return path


def run(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_range_fault_is_nan_only_beyond_the_lab_saturation(tmp_path):
    src = tiny_onnx(tmp_path / "v1.onnx")
    dst = model.inject_range_fault(src, tmp_path / "v2.onnx", limit=2 / 16 + 0.01)  # at most 2 of 16 pixels saturated
    x = np.zeros((3, 1, 4, 4), dtype=np.float32)
    x[0, 0, 0, :2] = 1.0  # 2 saturated: in range
    x[1, 0, 0, :3] = 1.0  # 3 saturated: beyond the lab maximum
    x[2, 0, 0, :] = 0.98  # bright but below the saturation level
    out1, out2 = run(src, x), run(dst, x)
    assert np.isfinite(out1).all()
    np.testing.assert_allclose(out2[[0, 2]], out1[[0, 2]], rtol=1e-6)  # unchanged where in range
    assert np.isnan(out2[1]).all()  # per frame: only the out-of-range frame is NaN
    assert model.saturated_share(x).tolist() == [2 / 16, 3 / 16, 0.0]


def test_range_fault_refuses_an_unexpected_graph(tmp_path):
    import onnx

    src = tiny_onnx(tmp_path / "v1.onnx")
    m = onnx.load(str(src))
    m.graph.output[0].name = "logits"
    m.graph.node[-1].output[0] = "logits"
    onnx.save(m, str(tmp_path / "other.onnx"))
    with pytest.raises(model.DemoError, match="output_0"):
        model.inject_range_fault(tmp_path / "other.onnx", tmp_path / "v2.onnx", 0.1)


def _tiny_build(tmp_path, onnx_path, version):
    """Build a bundle of the tiny model with the real packager (fast: 4x4 inputs)."""
    rng = np.random.default_rng(1)
    x = (rng.random((64, 1, 4, 4)) * 0.9).astype(np.float32)
    x[:, 0, 0, 0] = 1.0  # one saturated pixel per lab frame
    np.savez(tmp_path / "calib.npz", input=x[:32])
    np.savez(tmp_path / "val.npz", input=x[32:])
    data = SimpleNamespace(calibration=tmp_path / "calib.npz", validation=tmp_path / "val.npz", sample=SimpleNamespace(x_val=x[32:]))
    r = model.build_bundle(onnx_path, data, "x86_64-avx2", version, 1, tmp_path / f"tiny-{version}.bundle")
    return r, data


def test_check_fault_on_built_bundles(tmp_path):
    """The quantized v2 keeps the NaN (not folded or quantized away); a bundle without the fault is refused."""
    src = tiny_onnx(tmp_path / "v1.onnx")
    v2 = model.inject_range_fault(src, tmp_path / "v2.onnx", limit=1 / 16 + 0.01)
    r2, data = _tiny_build(tmp_path, v2, "2.0.0")
    assert r2.gates_passed
    drifted = np.clip(data.sample.x_val * 1.4, 0, 1).astype(np.float32)
    found = model.check_fault(r2.path, data, drifted, tmp_path / "chk2")
    assert found["lab_nan"] == 0 and found["drifted_nan"] > 0

    r1, _ = _tiny_build(tmp_path, src, "1.0.0")
    with pytest.raises(model.DemoError, match="no NaN"):
        model.check_fault(r1.path, data, drifted, tmp_path / "chk1")


def test_camera_is_deterministic_and_saturates():
    frames = np.full((5, 1, 2, 2), 0.8, dtype=np.float32)
    labels = np.arange(5)
    a = [camera.Camera(frames, labels, seed=4).next() for _ in range(1)]
    c1, c2 = camera.Camera(frames, labels, seed=4), camera.Camera(frames, labels, seed=4)
    seq1 = [c1.next() for _ in range(20)]
    seq2 = [c2.next() for _ in range(20)]
    assert [s[1] for s in seq1] == [s[1] for s in seq2] and [s[2] for s in seq1] == [s[2] for s in seq2]
    assert a[0][0].shape == (1, 1, 2, 2) and a[0][0].dtype == np.float32
    gains = np.array([s[2] for s in seq1])
    assert gains.min() >= 0.9 and gains.max() <= 1.4
    for frame, _, gain in seq1:
        assert frame.max() <= 1.0
        assert np.allclose(frame, min(0.8 * gain, 1.0))
    with pytest.raises(ValueError):
        camera.Camera(frames, labels, gain_range=(1.2, 1.0))


def test_camera_remembers_the_true_label_of_its_recent_frames(monkeypatch):
    """How the demo labels captured frames: a frame's bytes name its true digit, for the last
    TRUTH_KEPT frames only (the memory is bounded)."""
    rng = np.random.default_rng(1)
    frames = rng.uniform(0, 1, size=(50, 1, 4, 4)).astype(np.float32)
    labels = np.arange(50) % 10
    monkeypatch.setattr(camera, "TRUTH_KEPT", 8)
    cam = camera.Camera(frames, labels, seed=2)
    shots = [cam.next() for _ in range(30)]
    for frame, label, _ in shots[-5:]:
        assert cam.label_of(frame.copy()) == label  # a copy, as a captured sample is
    assert len(cam.truth) <= 8
    old = [f for f, _, _ in shots[:10] if camera.frame_key(f) not in {camera.frame_key(g) for g, _, _ in shots[-8:]}]
    assert old and all(cam.label_of(f) is None for f in old)
    assert cam.label_of(np.full((1, 1, 4, 4), 7.0, dtype=np.float32)) is None


def test_fleet_sites_and_the_bright_cohort(tmp_path):
    """Devices are spread over the sites round robin; the bright site's cameras use BRIGHT_GAIN."""
    from edgeops.demo.fleet import BRIGHT_SITE, SITES, DemoFleet, site_of

    assert [site_of(i) for i in range(4)] == [SITES[0], SITES[1], SITES[2], SITES[0]]
    frames = np.full((3, 1, 2, 2), 0.5, dtype=np.float32)
    fleet = DemoFleet(7, tmp_path, "x86_64-avx2", "mqtt://127.0.0.1:1", "5", tmp_path / "root.json", frames, np.zeros(3, dtype=np.int64), run_id="t")
    bright = fleet.at_site(BRIGHT_SITE)
    assert bright == [fleet.device_ids[i] for i in range(7) if i % 3 == SITES.index(BRIGHT_SITE)]
    for d in fleet.device_ids:
        assert fleet.cameras[d].gain_range == (camera.BRIGHT_GAIN if d in bright else camera.DEFAULT_GAIN)
    assert camera.BRIGHT_GAIN[0] > camera.DEFAULT_GAIN[0] and camera.BRIGHT_GAIN[1] > camera.DEFAULT_GAIN[1]


def test_choose_profile():
    assert host.choose_profile("auto", {"avx2", "avx512f", "avx512_vnni"})[0] == "x86_64-avx512-vnni"
    assert host.choose_profile("auto", {"sse4_2", "avx2", "fma"})[0] == "x86_64-avx2"
    assert host.choose_profile("x86_64-avx2", {"sse4_2", "avx2", "fma"})[0] == "x86_64-avx2"
    with pytest.raises(ConfigError, match="avx512_vnni"):
        host.choose_profile("x86_64-avx512-vnni", {"sse4_2", "avx2", "fma"})
    with pytest.raises(ConfigError, match="onnxruntime"):
        host.choose_profile("arm64-litert", set())


def test_agent_config_validates(tmp_path):
    from edgeops.agent.config import parse_config

    cfg = parse_config(agent_config("cam-1", tmp_path / "d", "x86_64-avx2", "mqtt://127.0.0.1:1883", "3.1.1", tmp_path / "root.json", {"demo": "ab"}))
    assert cfg.broker.mqtt_version == "3.1.1" and cfg.api.listen == "" and cfg.probation.synthetic_interval_s == 0


def test_cli_rejects_bad_options(tmp_path):
    from edgeops.cli import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["demo", "--devices", "2"])
    assert res.exit_code == 2 and "--devices" in res.output
    res = runner.invoke(cli, ["demo", "--help"])
    assert res.exit_code == 0 and "--keep-running" in res.output and "--broker" in res.output
