"""The agent serves LiteRT bundles the way the packager validated them: through the model's
signature (names ``x`` / ``output_0``, not the interpreter's ``serving_default_x``), with float
I/O for fully-integer models. Before, every bundle litert-torch wrote failed the agent's
self-test with "missing input 'serving_default_x'" (found by bench/agent.py's LiteRT row)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edgeops.agent.config import SelfTestConfig
from edgeops.agent.runtimes import InferenceError, LiteRtRuntime, RuntimeLoadError, load_runtime
from edgeops.agent.selftest import load_golden, run_self_test
from edgeops.bundle import Manifest, extract_bundle
from edgeops.golden import compare_outputs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("litert_torch") is None, reason="litert-torch is not installed (pip install 'edgeops[tflite]')"),
]


def _build(folder: Path, profile: str, quantize: str) -> tuple[Path, Manifest]:
    from edgeops.converters import samples
    from edgeops.converters.pipeline import BuildOptions, build

    _, _, x_val, y_val, x_calib = samples.digits_arrays(size=16)
    np.savez(folder / "validation.npz", input=x_val, labels=y_val)
    np.savez(folder / "calibration.npz", input=x_calib)
    result = build(BuildOptions(model="edgeops.converters.samples:digits_cnn", profile=profile, name="cnn", version="1", output=str(folder / f"{quantize}.bundle"),
                                calibration=str(folder / "calibration.npz"), validation=str(folder / "validation.npz"), quantize=quantize, latency_runs=5))
    files = folder / quantize
    return files, extract_bundle(result.path, files)  # the files as the agent's store holds them


@pytest.fixture(scope="module", params=[("arm64-litert", "dynamic-int8"), ("coral-edgetpu", "full-int8")], ids=["dynamic-int8", "full-int8"])
def litert_files(request, tmp_path_factory):
    profile, quantize = request.param
    files, manifest = _build(tmp_path_factory.mktemp(quantize), profile, quantize)
    return files, manifest, quantize


def test_self_test_passes_on_a_packaged_litert_bundle(litert_files):
    files, manifest, quantize = litert_files
    assert manifest.runtime == "litert" and manifest.quantization == quantize
    report = run_self_test(files, manifest, SelfTestConfig(), load_runtime, [], 1)
    assert report.passed, report.summary()
    assert {g.gate for g in report.gates} >= {"load", "golden", "errors"}


def test_signature_names_and_float_io_match_the_manifest(litert_files):
    files, manifest, _ = litert_files
    runtime = LiteRtRuntime(files / manifest.artifact)
    assert runtime.input_names == [t.name for t in manifest.inputs]
    assert runtime.output_names == [t.name for t in manifest.outputs]
    golden = load_golden(files)
    for inputs, expected in golden.cases:
        actual = runtime.run(inputs)
        assert all(v.dtype == np.float32 for v in actual.values())  # int8 outputs come back dequantized
        assert compare_outputs(actual, expected, golden.tolerances) == []


def test_missing_input_is_an_inference_error_naming_it(litert_files):
    files, _, _ = litert_files
    runtime = LiteRtRuntime(files / "model" / "model.tflite")
    with pytest.raises(InferenceError, match=runtime.input_names[0]):
        runtime.run({"not-an-input": np.zeros((1, 1, 16, 16), np.float32)})


def test_a_file_that_is_not_a_tflite_model_is_a_load_error(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"TFL3 but not really a flatbuffer" * 10)
    with pytest.raises(RuntimeLoadError, match="LiteRT cannot load"):
        LiteRtRuntime(bad)
