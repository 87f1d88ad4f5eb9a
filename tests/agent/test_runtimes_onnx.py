"""The onnxruntime runtime reports the execution providers its session really uses."""

from __future__ import annotations

from edgeops.agent.runtimes import OnnxRuntime, accelerator_fallback, execution_providers
from tests.support.bundles import make_bundle_bytes_payload


def test_session_providers_are_what_onnxruntime_runs_not_what_was_asked(tmp_path):
    model, _ = make_bundle_bytes_payload("good", 0, True, None)
    path = tmp_path / "m.onnx"
    path.write_bytes(model)
    # TensorRT is asked for first; this build either lacks it (dropped by choose_providers) or
    # cannot load it (dropped by onnxruntime): either way the session's list is the truth.
    runtime = OnnxRuntime(path, ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert execution_providers(runtime) == runtime.providers
    assert runtime.providers[-1] == "CPUExecutionProvider"
    runtime.close()


def test_accelerator_fallback():
    jetson = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "fell back to the CPU" in accelerator_fallback(jetson, ["CPUExecutionProvider"])
    assert accelerator_fallback(jetson, ["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    assert accelerator_fallback(["CPUExecutionProvider"], ["CPUExecutionProvider"]) is None
    assert "fell back" in accelerator_fallback(jetson, [])


def test_execution_providers_of_a_runtime_without_providers():
    class Plain:
        pass

    assert execution_providers(Plain()) is None
