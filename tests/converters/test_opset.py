"""Opsets outside the profile's range: converted by the convert-opset pass (reported), or refused
naming the node and operator the converter cannot adapt."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from edgeops.bundle import read_bundle
from edgeops.converters.errors import OpsetConversionError
from edgeops.converters.graph import default_opset
from edgeops.converters.passes.opset import convert, ops_touched
from tests.converters.conftest import run_cli
from tests.support.onnx_models import conv_net, write_data


@pytest.mark.parametrize("opset", [9, 11])
def test_old_opset_model_with_constant_node_weights_builds_quantized(opset, tmp_path, capsys):
    # Paddle-style export: opset 9/11, every weight in a Constant node, conv weights computed by
    # a constant subgraph. It must be converted, normalized and picked as a conv net by auto.
    src = tmp_path / f"paddle{opset}.onnx"
    onnx.save(conv_net(opset=opset, style="constant-subgraph"), str(src))
    data = write_data(tmp_path)
    out = tmp_path / "m.bundle"
    code, stdout, stderr = run_cli([
        "build", src, "--profile", "x86_64-avx512-vnni", "--name", "paddle", "--version", "1",
        "--calibration", data["calibration"], "--validation", data["validation"], "--json", "-o", out,
    ], capsys)
    assert code == 0, stderr
    report = json.loads(stdout)["report"]
    conv = report["conversions"]["opset_conversion"]
    assert (conv["from"], conv["to"]) == (opset, 13)
    assert conv["ops_touched"]["Gemm"] == 1 and "version_converter" in conv["tool"]
    assert any(p.startswith(f"convert-opset: ai.onnx opset {opset} -> 13") for p in report["passes"])
    q = report["quantization"]
    assert q["scheme"] == "static-int8", q
    assert q["model_analysis"].startswith("conv (Conv holds")
    built = onnx.load_model_from_string(read_bundle(out).files["model/model.onnx"])
    assert default_opset(built) == 13
    assert any(n.op_type == "QuantizeLinear" for n in built.graph.node)
    assert report["status"] == "passed"


def test_ops_touched_lists_changed_definitions_only():
    model = conv_net(opset=9, style="initializers")
    touched = ops_touched(model, 9, 13)
    # Conv changed at 11, Flatten/Gemm/Relu at 11-13; BatchNormalization (9) and GlobalAveragePool (1) did not.
    assert touched == {"Conv": 2, "Flatten": 1, "Gemm": 1, "Relu": 2}
    assert ops_touched(model, 13, 13) == {}


def _opset23_model():
    # RMSNormalization exists from opset 23 only: there is nothing to convert it down to.
    node = helper.make_node("RMSNormalization", ["x", "scale"], ["y"], name="block3/rms_norm", axis=-1)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        initializer=[helper.make_tensor("scale", TensorProto.FLOAT, [8], [1.0] * 8)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def test_unconvertible_op_is_refused_naming_node_and_op(tmp_path, capsys):
    with pytest.raises(OpsetConversionError) as err:
        convert(_opset23_model(), 21)
    assert "node 'block3/rms_norm' (op RMSNormalization)" in str(err.value) and "opset 23 to 21" in str(err.value)
    src = tmp_path / "new.onnx"
    onnx.save(_opset23_model(), str(src))
    code, _, stderr = run_cli(["build", src, "--profile", "x86_64-avx512-vnni", "--name", "n", "--version", "1", "-o", tmp_path / "n.bundle"], capsys)
    assert code == 4
    assert "RMSNormalization" in stderr and "block3/rms_norm" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "n.bundle").exists()
