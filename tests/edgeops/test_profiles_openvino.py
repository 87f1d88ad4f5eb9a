"""OpenVINO profiles: the runtime's own keys (device, inference precision, performance hint)
validate, are refused on the other runtimes, and bad values name the file and the key."""

from __future__ import annotations

import pytest

from edgeops.errors import ProfileError
from edgeops.profiles import builtin_profiles_dir, load_profile


def test_builtin_openvino_profiles_and_the_onnxruntime_ones_beside_them():
    p = load_profile("x86_64-openvino-int8")
    assert p.runtime.name == "openvino" and p.artifact_format == "openvino"
    assert (p.runtime.openvino_device, p.runtime.openvino_precision, p.runtime.openvino_hint) == ("CPU", "auto", "LATENCY")
    assert p.quantization.scheme == "static-int8" and "avx512_bf16" in p.device.cpu_features
    assert load_profile("x86_64-avx2-openvino-int8").runtime.openvino_precision == "f32"
    assert load_profile("x86_64-avx512-vnni").runtime.name == "onnxruntime"  # kept


def _openvino_text() -> str:
    return (builtin_profiles_dir() / "x86_64-openvino-int8.toml").read_text()


def _onnxruntime_text() -> str:
    return (builtin_profiles_dir() / "x86_64-avx512-vnni.toml").read_text()


@pytest.mark.parametrize(
    "text, must_mention",
    [
        (lambda: _openvino_text().replace('device = "CPU"', 'device = "TPU"'), ["runtime.device", "CPU, GPU, NPU", "'TPU'"]),
        (lambda: _openvino_text().replace('inference_precision = "auto"', 'inference_precision = "fp8"'), ["runtime.inference_precision", "f32, bf16, auto"]),
        (lambda: _openvino_text().replace('performance_hint = "LATENCY"', 'performance_hint = "FAST"'), ["runtime.performance_hint", "LATENCY, THROUGHPUT"]),
        (lambda: _openvino_text().replace('providers = ["CPU"]', 'providers = ["CPUExecutionProvider", "CUDAExecutionProvider"]'), ["runtime.providers", "runtime.device"]),
        (lambda: _onnxruntime_text().replace("threads = 1", 'threads = 1\ninference_precision = "bf16"'), ["runtime.inference_precision", "only OpenVINO profiles", "onnxruntime"]),
        (lambda: _onnxruntime_text().replace("threads = 1", 'threads = 1\ndevice = "GPU"'), ["runtime.device", "only OpenVINO profiles"]),
        (lambda: _openvino_text().replace('name = "openvino"', 'name = "openvinox"'), ["runtime.name", "openvino"]),
    ],
)
def test_bad_openvino_keys_name_file_and_key(tmp_path, text, must_mention):
    path = tmp_path / "bad.toml"
    path.write_text(text())
    with pytest.raises(ProfileError) as err:
        load_profile(str(path))
    message = str(err.value)
    assert str(path) in message
    for word in must_mention:
        assert word in message, message
