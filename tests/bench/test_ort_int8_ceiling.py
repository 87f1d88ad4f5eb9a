"""bench/ort_int8_ceiling.py's layouts: the depthwise convolutions it keeps float, and each layout
onnxruntime really builds (a tiny model through the script's own quantize_variant)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import ort_int8_ceiling as ceiling  # noqa: E402


def _model(path: Path) -> Path:
    """x -> Conv 3->8 -> depthwise Conv (group 8) -> Add(residual) -> y."""
    rng = np.random.default_rng(0)
    w0 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w0")
    w1 = numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "w1")
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w1"], ["b"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Add", ["a", "b"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], initializer=[w0, w1])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _int8_outputs(path: Path) -> set[str]:
    """Node names whose output feeds a QuantizeLinear (computed, then requantized, in int8)."""
    m = onnx.load(str(path))
    q_in = {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    return {n.name for n in m.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(o in q_in for o in n.output)}


def _int8_weights(path: Path) -> set[str]:
    """Conv nodes whose weight comes through a DequantizeLinear (int8 weights)."""
    m = onnx.load(str(path))
    dq_out = {n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in m.graph.node if n.op_type == "Conv" and n.input[1] in dq_out}


def test_depthwise_convs_are_the_grouped_ones(tmp_path):
    assert ceiling.depthwise_convs(_model(tmp_path / "m.onnx")) == ["dw"]


def test_each_layout_is_what_its_label_says(tmp_path):
    src = _model(tmp_path / "m.onnx")
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 3, 16, 16)).astype(np.float32)} for i in range(4)]
    built = {label: ceiling.quantize_variant(src, feeds, label, tmp_path) for label in ("qdq-pc-u8s8", "qdq-pc-u8s8-matmul-only", "qdq-pc-u8s8-no-depthwise", "qop-pc-u8s8")}
    assert "residual" in _int8_outputs(built["qdq-pc-u8s8"])  # the full graph: the Add in int8 too
    assert "residual" not in _int8_outputs(built["qdq-pc-u8s8-matmul-only"])
    assert _int8_weights(built["qdq-pc-u8s8"]) == {"stem", "dw"} and _int8_weights(built["qdq-pc-u8s8-no-depthwise"]) == {"stem"}
    assert any(n.op_type == "QLinearConv" for n in onnx.load(str(built["qop-pc-u8s8"])).graph.node)
    assert not list(Path.cwd().glob("sym_shape_infer_temp.onnx"))  # onnxruntime's litter stays in the scratch folder
