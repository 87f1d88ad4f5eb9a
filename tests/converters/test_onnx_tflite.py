"""ONNX models for LiteRT profiles: onnx2tf -> .tflite, checked against onnxruntime, quantized with
ai-edge-quantizer, validated in ai-edge-litert, self-tested by the agent's LiteRT runtime.

Before, `edgeops build model.onnx --profile arm64-litert` was refused ("ONNX -> TFLite conversion
is not supported") whatever the model.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from edgeops.bundle import extract_bundle, read_bundle

from .conftest import run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("onnx2tf") is None, reason="onnx2tf is not installed (scripts/setup.sh installs it)"),
]

SIZE = 96


@pytest.fixture(scope="module")
def hf_mobilenet(tmp_path_factory):
    """transformers' MobileNetV2 (0.35 width, 96x96, random weights, bench/corpus_torch.py) exported to
    ONNX as Hugging Face exports are (TorchScript exporter, opset 13), with image-like data."""
    import torch

    from bench.corpus_torch import mobilenet_v2_small

    module, example = mobilenet_v2_small()
    folder = tmp_path_factory.mktemp("hf-mobilenet")
    path = folder / "mobilenet_v2.onnx"
    torch.onnx.export(module, example, str(path), dynamo=False, opset_version=13,
                      input_names=["pixel_values"], output_names=["logits"])
    rng = np.random.default_rng(0)
    # Smooth random "images" (upsampled noise), ImageNet-normalized, so activations look like real ones.
    def images(n):
        low = rng.uniform(0, 1, (n, 3, SIZE // 8, SIZE // 8)).astype(np.float32)
        return ((np.repeat(np.repeat(low, 8, axis=2), 8, axis=3) - 0.45) / 0.225).astype(np.float32)

    np.savez(folder / "calibration.npz", pixel_values=images(32))
    np.savez(folder / "validation.npz", pixel_values=images(8))
    return {"onnx": path, "calibration": folder / "calibration.npz", "validation": folder / "validation.npz", "dir": folder}


@pytest.fixture(scope="module")
def ppocr_cls(tmp_path_factory):
    """PaddleOCR's text-line orientation classifier as RapidOCR ships it in its wheel (a Paddle
    export: opset 11, weights in Constant nodes), fetched by bench/corpus.py, with its rendered-text data."""
    from bench import corpus

    entry = corpus.by_name("ppocr-cls")
    try:
        path = corpus.fetch(entry)
    except Exception as e:  # pragma: no cover - no package index reachable
        pytest.skip(f"cannot fetch {entry.spec}: {e}")
    folder = tmp_path_factory.mktemp("ppocr-cls")
    data = corpus.write_data(entry, folder)
    return {"onnx": path, **data}


def _self_test(bundle, folder):
    from edgeops.agent.config import SelfTestConfig
    from edgeops.agent.runtimes import load_runtime
    from edgeops.agent.selftest import run_self_test

    manifest = extract_bundle(bundle, folder)
    report = run_self_test(folder, manifest, SelfTestConfig(), load_runtime, [], 1)
    assert report.passed, report.summary()
    return manifest


def test_hugging_face_onnx_export_builds_for_arm64_litert_and_passes_the_agent_self_test(hf_mobilenet, tmp_path, capsys):
    out = tmp_path / "mnv2.bundle"
    # Random weights quantize worse than trained ones (int8 weights of 17 random depthwise blocks:
    # cosine ~0.96 against float); the conversion itself is held to cosine 0.999 by the pass.
    code, stdout, err = run_cli(["build", hf_mobilenet["onnx"], "--profile", "arm64-litert", "--name", "mnv2", "--version", "1",
                                 "--validation", hf_mobilenet["validation"], "--min-cosine", "0.9", "--json", "-o", out], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    report, manifest = doc["report"], doc["manifest"]
    assert manifest["runtime"] == "litert" and manifest["artifact"] == "model/model.tflite"
    assert any(p.startswith("onnx-to-tflite: onnx2tf") for p in report["passes"]), report["passes"]
    assert report["quantization"]["scheme"] == "dynamic-int8"  # the profile's scheme, applied to the converted model
    assert {"onnx2tf", "tensorflow", "ai-edge-quantizer"} <= set(manifest["provenance"]["toolchain"])
    # The ONNX model's names and NCHW layout survive the conversion.
    assert manifest["inputs"] == [{"name": "pixel_values", "dtype": "float32", "shape": [1, 3, SIZE, SIZE]}]
    assert [o["name"] for o in manifest["outputs"]] == ["logits"]
    assert all(g["passed"] for g in report["gates"])
    _self_test(out, tmp_path / "device")


def test_the_parity_check_refuses_a_tflite_that_computes_something_else(hf_mobilenet):
    """The converter's output is verified, not trusted: a .tflite of other weights is refused."""
    from onnx import numpy_helper

    from edgeops.converters.errors import ConversionMismatchError
    from edgeops.converters.passes import Artifact, PassContext, create_pass
    from edgeops.converters.passes.onnx_tflite import check_parity

    from edgeops.converters.intake import prepare_onnx
    from edgeops.profiles import load_profile

    ctx = PassContext(profile=load_profile("arm64-litert"))
    # The model exactly as the build above prepared it: the pass converts it once per process.
    prepared, model = prepare_onnx(Artifact("onnx", data=hf_mobilenet["onnx"].read_bytes()), ctx.profile, ctx, ctx.step, "mobilenet_v2.onnx")
    converted = create_pass("onnx-to-tflite")(prepared, ctx)
    check_parity(model.SerializeToString(), converted.data, 0.999, 2)  # the genuine pair passes
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    tampered = numpy_helper.to_array(biggest).copy()
    tampered *= -1.0  # the classifier's weights negated
    biggest.CopyFrom(numpy_helper.from_array(tampered, biggest.name))
    with pytest.raises(ConversionMismatchError, match="logits"):
        check_parity(model.SerializeToString(), converted.data, 0.999, 2)


def test_paddle_export_from_a_wheel_builds_for_arm64_litert_and_passes_the_agent_self_test(ppocr_cls, tmp_path, capsys):
    out = tmp_path / "cls.bundle"
    code, stdout, err = run_cli(["build", ppocr_cls["onnx"], "--profile", "arm64-litert", "--name", "cls", "--version", "1",
                                 "--validation", ppocr_cls["validation"], "--json", "-o", out], capsys)
    assert code == 0, err
    report = json.loads(stdout)["report"]
    passes = " | ".join(report["passes"])
    # opset 11 -> 13 and the Constant weights folded (the ONNX intake), then onnx2tf and the profile's scheme
    assert "convert-opset" in passes and "normalize" in passes and "onnx-to-tflite: onnx2tf" in passes
    assert report["quantization"]["scheme"] == "dynamic-int8"
    assert report["metrics"]["top1_agreement"] >= 0.98 and all(g["passed"] for g in report["gates"])
    _self_test(out, tmp_path / "device")


def test_paddle_export_builds_full_int8_for_the_edge_tpu(ppocr_cls, tmp_path, capsys):
    out = tmp_path / "tpu.bundle"
    code, stdout, err = run_cli(["build", ppocr_cls["onnx"], "--profile", "coral-edgetpu", "--name", "cls", "--version", "1",
                                 "--calibration", ppocr_cls["calibration"], "--validation", ppocr_cls["validation"], "--json", "-o", out], capsys)
    assert code == 0, err
    report = json.loads(stdout)["report"]
    assert report["quantization"]["scheme"] == "full-int8"
    assert all(g["passed"] for g in report["gates"])  # the profile's gates, unchanged
    from ai_edge_litert.interpreter import Interpreter

    tflite = read_bundle(out).files["model/model.tflite"]
    assert Interpreter(model_content=tflite).get_input_details()[0]["dtype"] == np.int8  # fully integer I/O for the Edge TPU
    _self_test(out, tmp_path / "device")


def _tiny_model(path, node, extra_opsets=()):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), *extra_opsets]), path)
    return path


def test_custom_domain_op_is_refused_for_litert_naming_op_domain_and_node(tmp_path, capsys):
    from onnx import helper

    model = _tiny_model(tmp_path / "custom.onnx", helper.make_node("FancyGelu", ["x"], ["y"], name="block3/act", domain="com.example"),
                        [helper.make_opsetid("com.example", 1)])
    code, _, err = run_cli(["build", model, "--profile", "arm64-litert", "--name", "m", "--version", "1", "-o", tmp_path / "o.bundle"], capsys)
    assert code == 4, err
    assert "FancyGelu" in err and "com.example" in err and "block3/act" in err
    assert not (tmp_path / "o.bundle").exists()


def test_control_flow_is_refused_for_the_edge_tpu_before_conversion(tmp_path, capsys):
    from onnx import TensorProto, helper

    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "b", [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])])
    import onnx

    # A data-dependent branch (sum(x) > 0), which no constant folding removes.
    total = helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="total")
    zero = helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", TensorProto.FLOAT, [], [0.0]), name="zero")
    cond = helper.make_node("Greater", ["s", "zero"], ["c"], name="cond")
    node = helper.make_node("If", ["c"], ["y"], name="gate", then_branch=branch, else_branch=branch)
    graph = helper.make_graph([total, zero, cond, node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "if.onnx")
    code, _, err = run_cli(["build", tmp_path / "if.onnx", "--profile", "coral-edgetpu", "--name", "m", "--version", "1",
                            "--quantize", "full-int8", "-o", tmp_path / "o.bundle"], capsys)
    assert code == 4, err
    assert "gate" in err and "If" in err and "coral-edgetpu" in err
