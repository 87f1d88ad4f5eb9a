"""The LiteRT path: PyTorch -> .tflite with litert-torch, int8 with ai-edge-quantizer, run in ai-edge-litert."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from edgeops.bundle import read_bundle
from edgeops.golden import GoldenVectors, compare_outputs

from .conftest import run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None, reason="litert-torch is not installed (pip install 'edgeops[tflite]')"),
]


@pytest.fixture(scope="module")
def tflite_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("litert")
    import numpy as np

    from edgeops.converters import samples

    x_train, y_train, x_val, y_val, x_calib = samples.digits_arrays(size=16)
    np.savez(folder / "validation.npz", input=x_val, labels=y_val)
    np.savez(folder / "calibration.npz", input=x_calib)
    return folder


def test_litert_profile_build_runs_in_ai_edge_litert(tflite_bundle, tmp_path, capsys):
    out = tmp_path / "cnn.bundle"
    code, stdout, err = run_cli([
        "build", "edgeops.converters.samples:digits_cnn", "--profile", "arm64-litert", "--name", "cnn", "--version", "1",
        "--validation", tflite_bundle / "validation.npz", "--json", "-o", out,
    ], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["manifest"]["runtime"] == "litert" and doc["manifest"]["artifact"] == "model/model.tflite"
    assert doc["report"]["quantization"]["scheme"] == "dynamic-int8"
    assert doc["report"]["metrics"]["top1_agreement"] >= 0.98
    assert "litert-torch" in doc["manifest"]["provenance"]["toolchain"]
    contents = read_bundle(out)
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=contents.files["model/model.tflite"]).get_signature_runner()
    golden = GoldenVectors.from_json_bytes(contents.files["golden.json"])
    for inputs, expected in golden.cases:
        assert compare_outputs(dict(runner(**inputs)), expected, golden.tolerances) == []


def test_full_int8_and_tflite_input_packaged_as_is(tflite_bundle, tmp_path, capsys):
    full = tmp_path / "full.bundle"
    code, stdout, err = run_cli([
        "build", "edgeops.converters.samples:digits_cnn", "--profile", "coral-edgetpu", "--name", "cnn", "--version", "1",
        "--calibration", tflite_bundle / "calibration.npz", "--validation", tflite_bundle / "validation.npz", "--json", "-o", full,
    ], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["report"]["quantization"]["scheme"] == "full-int8"
    assert any("edgetpu_compiler" in w for w in doc["report"]["warnings"])
    model = tmp_path / "int8.tflite"
    model.write_bytes(read_bundle(full).files["model/model.tflite"])
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_content=model.read_bytes()).get_input_details()
    assert details[0]["dtype"] == np.int8  # fully integer I/O, as the Edge TPU needs
    # An already-quantized .tflite is validated and packaged byte for byte.
    again = tmp_path / "again.bundle"
    code, stdout, err = run_cli(["build", model, "--profile", "arm64-litert", "--name", "cnn", "--version", "2", "--json", "-o", again], capsys)
    assert code == 0, err
    assert json.loads(stdout)["report"]["quantization"]["scheme"] == "none"
    assert read_bundle(again).files["model/model.tflite"] == model.read_bytes()


def test_broken_tflite_file(tmp_path, capsys):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    code, _, err = run_cli(["build", bad, "--profile", "arm64-litert", "--name", "m", "--version", "1", "-o", tmp_path / "o"], capsys)
    assert code == 4 and "bad.tflite" in err
