"""The agent serves OpenVINO bundles through the same runtime interface as onnxruntime and
LiteRT ones (self-test against the golden vectors, inference), with the precision the packager
validated; a device without openvino refuses such a bundle in the verifying pass, before
anything is installed or activated; and the agent never imports openvino unless a bundle needs it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeops.agent.config import SelfTestConfig
from edgeops.agent.runtimes import check_runtime_installed, load_runtime
from edgeops.agent.selftest import load_golden, run_self_test
from edgeops.bundle import extract_bundle
from edgeops.golden import compare_outputs

ROOT = Path(__file__).resolve().parents[2]
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="openvino/nncf not installed (pip install 'edgeops[openvino-build]')")


@pytest.fixture(scope="module")
def ov_bundle(tmp_path_factory):
    """An OpenVINO int8 digits CNN bundle, built by the real packager, as a device's store holds it."""
    from edgeops.converters import samples
    from edgeops.converters.pipeline import BuildOptions, build

    folder = tmp_path_factory.mktemp("ov")
    _, _, x_val, y_val, x_calib = samples.digits_arrays(size=16)
    np.savez(folder / "validation.npz", input=x_val, labels=y_val)
    np.savez(folder / "calibration.npz", input=x_calib)
    result = build(BuildOptions(model="edgeops.converters.samples:digits_cnn", profile="x86_64-openvino-int8", name="cnn", version="1", output=str(folder / "cnn.bundle"),
                                calibration=str(folder / "calibration.npz"), validation=str(folder / "validation.npz"), quantize="static-int8", latency_runs=5))
    files = folder / "files"
    return result.path, files, extract_bundle(result.path, files)


@needs_openvino
def test_self_test_and_serving_of_an_openvino_int8_bundle(ov_bundle):
    _, files, manifest = ov_bundle
    assert manifest.runtime == "openvino" and manifest.quantization == "static-int8"
    report = run_self_test(files, manifest, SelfTestConfig(), load_runtime, ["CPU"], 1, keep_runtime=True)
    assert report.passed, report.summary()
    runtime = report.runtime
    assert runtime.input_names == [i.name for i in manifest.inputs] and runtime.output_names == [o.name for o in manifest.outputs]
    golden = load_golden(files)
    for feed, expected in golden.cases:
        assert compare_outputs(runtime.run(feed), expected, golden.tolerances) == []
    runtime.close()


@needs_openvino
def test_a_tampered_ir_fails_the_self_test(ov_bundle, tmp_path):
    """The self-test runs the IR as shipped: weights changed after the build no longer match the golden vectors."""
    import shutil

    _, files, manifest = ov_bundle
    copy = tmp_path / "files"
    shutil.copytree(files, copy)
    weights = copy / "model" / "model.bin"
    data = bytearray(weights.read_bytes())
    for i in range(0, len(data), 7):  # int8 weights and fp16 biases alike
        data[i] ^= 0x55
    weights.write_bytes(bytes(data))
    report = run_self_test(copy, manifest, SelfTestConfig(), load_runtime, ["CPU"], 1)
    assert not report.passed


BLOCK_OPENVINO = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'openvino':
            raise ModuleNotFoundError('openvino is not installed on this device')
        return None
sys.meta_path.insert(0, Block())
"""


def _device_without_openvino(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where openvino cannot be found, as on a device without the extra."""
    return subprocess.run([sys.executable, "-c", BLOCK_OPENVINO + code], cwd=ROOT, capture_output=True, text=True, timeout=120)


@needs_openvino
def test_a_device_without_openvino_refuses_the_bundle_before_activation(ov_bundle, tmp_path):
    bundle, files, manifest = ov_bundle
    (tmp_path / "manifest.json").write_bytes(manifest.to_json_bytes())
    r = _device_without_openvino(
        "from pathlib import Path\n"
        "from edgeops.bundle import Manifest\n"
        "from edgeops.errors import BundleError\n"
        "from edgeops.agent.runtimes import RuntimeLoadError, check_runtime_installed, load_runtime\n"
        f"m = Manifest.from_json_bytes(Path({str(tmp_path / 'manifest.json')!r}).read_bytes())\n"
        "try:\n"
        "    check_runtime_installed(m)\n"
        "except BundleError as e:\n"
        "    print('refused:', e)\n"
        "try:\n"
        f"    load_runtime(Path({str(files / manifest.artifact)!r}), m, ['CPU'], 1)\n"
        "except RuntimeLoadError as e:\n"
        "    print('load:', e)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "refused: bundle cnn 1 needs the OpenVINO runtime, which is not installed on this device" in r.stdout
    assert "edgeops[agent,openvino]" in r.stdout
    assert "load: bundle cnn 1 needs OpenVINO" in r.stdout
    check_runtime_installed(manifest)  # here, with openvino installed, it is accepted


def test_the_agent_does_not_import_openvino_until_a_bundle_needs_it():
    r = subprocess.run(
        [sys.executable, "-c", "import sys\nimport edgeops.agent\nfrom edgeops.agent import core, api, runtimes, runtime_openvino, selftest\n"
         "print('openvino' in sys.modules)"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
