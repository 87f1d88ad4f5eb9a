"""The drift reference `edgeops build` puts in the manifest (converters/monitoring.py)."""

from __future__ import annotations

import numpy as np

from edgeops import sketch as sk
from edgeops.bundle import Manifest, read_bundle

from .conftest import run_cli


def _build(cnn_files, out, *data):
    return [
        "build", cnn_files["onnx"], "--profile", "x86_64-avx512-vnni", "--name", "digits-cnn", "--version", "1.0.0",
        "--quantize", "dynamic-int8", *data, "-o", out,
    ]


def test_reference_from_validation_data_is_in_the_manifest_and_deterministic(cnn_files, tmp_path, capsys):
    a, b = tmp_path / "a.bundle", tmp_path / "b.bundle"
    for out in (a, b):
        code, _, err = run_cli(_build(cnn_files, out, "--validation", cnn_files["validation"]), capsys)
        assert code == 0, err
    ma, mb = read_bundle(a).manifest, read_bundle(b).manifest
    ref = ma.monitoring
    assert ref is not None and ref == mb.monitoring
    assert ref.to_json() == mb.monitoring.to_json() and a.read_bytes() == b.read_bytes()
    assert ref.source == "validation" and ref.data_sha256 == ma.provenance.validation_sha256
    assert set(ref.layouts) == {"input", "logits"}
    assert ref.layouts["logits"].classes == 10 and ref.states["logits"].rows == ref.rows > 0
    assert ref.method["bins"] == sk.DEFAULT_BINS
    # round trip through the manifest's JSON, and a score of the reference against itself is 0
    again = Manifest.from_json_bytes(ma.to_json_bytes()).monitoring
    assert again == ref
    assert sk.score(ref, dict(ref.states)).psi == 0.0

    # the validation images themselves score near 0; brightened, they drift
    data = np.load(cnn_files["validation"])["input"]
    half = data[: len(data) // 2]
    same = sk.score(ref, {"input": sk.sketch(ref.layouts["input"], [half])})
    bright = sk.score(ref, {"input": sk.sketch(ref.layouts["input"], [half + 1.0])})
    assert same.psi < 0.1 and same.p_value > 0.01
    assert bright.psi > 1.0 and bright.p_value < 1e-6
    code, stdout, _ = run_cli(["inspect", a], capsys)
    assert code == 0 and "drift reference: validation data" in stdout and "10 classes" in stdout


def test_reference_from_calibration_data_when_there_is_no_validation_data(cnn_files, tmp_path, capsys):
    out = tmp_path / "c.bundle"
    code, _, err = run_cli(_build(cnn_files, out, "--calibration", cnn_files["calibration"]), capsys)
    assert code == 0, err
    manifest = read_bundle(out).manifest
    assert manifest.monitoring is not None and manifest.monitoring.source == "calibration"
    assert manifest.monitoring.data_sha256 == manifest.provenance.calibration_sha256


def test_no_reference_without_data(cnn_files, tmp_path, capsys):
    out = tmp_path / "n.bundle"
    code, _, err = run_cli(_build(cnn_files, out, "--json"), capsys)
    assert code == 0, err
    assert read_bundle(out).manifest.monitoring is None
    assert "drift reference: none" in run_cli(["inspect", out], capsys)[1]
    assert b'"monitoring"' not in read_bundle(out).files.get("manifest.json", b"")


def test_a_reference_too_large_for_the_manifest_is_left_out_with_a_warning():
    from edgeops.bundle import TensorSpec
    from edgeops.converters.monitoring import MAX_REFERENCE_BYTES, make_reference

    rng = np.random.default_rng(0)
    warnings: list[str] = []
    # 32 tensors of 64 features each: 32 x 64 histograms of counts, one line each when indented
    specs = [TensorSpec(name=f"x{i}", dtype="float32", shape=["N", 64]) for i in range(32)]
    feeds = [{s.name: rng.normal(size=(2000, 64)).astype(np.float32) for s in specs}]
    assert make_reference("validation", None, feeds, [{}], specs, [], False, warnings.append) is None
    assert warnings and "left out of the manifest" in warnings[0] and str(MAX_REFERENCE_BYTES) in warnings[0]
    small = make_reference("validation", None, [{"x0": feeds[0]["x0"]}], [{}], specs[:1], [], False, warnings.append)
    assert small is not None and small.layouts["x0"].channels == 64
