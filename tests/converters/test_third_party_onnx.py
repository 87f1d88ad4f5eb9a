"""A third-party-style ONNX model: several inputs and outputs, an If node, made with onnx.helper."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper

from .conftest import run_cli


def _if_model(path, opset=17):
    """out = If(sum(a) > 0, a @ W + b, a @ W - b); also returns a + b. Inputs a [N,4], b [N,4]."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 4], np.random.default_rng(0).standard_normal(16).astype(np.float32).tolist())
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    then_g = helper.make_graph([helper.make_node("Add", ["aw", "b"], ["t_out"])], "then", [], [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Sub", ["aw", "b"], ["e_out"])], "else", [], [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("MatMul", ["a", "W"], ["aw"], name="matmul"),
        helper.make_node("ReduceSum", ["a"], ["s"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="greater"),
        helper.make_node("If", ["cond"], ["branch"], then_branch=then_g, else_branch=else_g, name="choose_branch"),
        helper.make_node("Add", ["a", "b"], ["total"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "third_party",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]), helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("branch", TensorProto.FLOAT, ["N", 4]), helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", 4])],
        initializer=[w, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="someone-else")
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_multi_input_if_model_builds_and_validates(tmp_path, capsys):
    model = _if_model(tmp_path / "third_party.onnx")
    data = tmp_path / "val.npz"
    rng = np.random.default_rng(1)
    np.savez(data, a=rng.standard_normal((8, 4)).astype(np.float32), b=rng.standard_normal((8, 4)).astype(np.float32))
    out = tmp_path / "tp.bundle"
    code, stdout, err = run_cli(["build", model, "--profile", "x86_64-avx2", "--name", "tp", "--version", "1", "--validation", data, "--json", "-o", out], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert [i["name"] for i in doc["manifest"]["inputs"]] == ["a", "b"]
    assert sorted(doc["report"]["metrics"]["outputs"]) == ["branch", "total"]
    assert doc["manifest"]["task"] == "generic"
    assert doc["report"]["quantization"]["scheme"] in ("none", "dynamic-int8")
    for out_metrics in doc["report"]["metrics"]["outputs"].values():
        assert out_metrics["cosine_mean"] > 0.98


def test_if_node_on_edgetpu_style_profile_names_the_node(tmp_path, capsys):
    from .test_bad_inputs import _custom_profile

    model = _if_model(tmp_path / "third_party.onnx")
    profile = _custom_profile(tmp_path, unsupported_ops=["Loop", "If", "Scan"])
    code, _, err = run_cli(["build", model, "--profile", profile, "--name", "tp", "--version", "1", "--quantize", "none", "-o", tmp_path / "o.bundle"], capsys)
    assert code == 4 and "choose_branch" in err and "op If" in err


def test_npz_missing_one_of_several_inputs_names_it(tmp_path, capsys):
    model = _if_model(tmp_path / "third_party.onnx")
    data = tmp_path / "val.npz"
    np.savez(data, a=np.zeros((2, 4), np.float32))
    code, _, err = run_cli(["build", model, "--profile", "x86_64-avx2", "--name", "tp", "--version", "1", "--validation", data, "-o", tmp_path / "o.bundle"], capsys)
    assert code == 4 and "'b'" in err
