"""Graph rewrites before quantization (converters/passes/fusion.py) and the shallow-conv rule.

Each rewrite must keep the float semantics exactly (compared in onnxruntime) and must leave
alone what it does not fully recognise.
"""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgeops.converters.passes import Artifact, PassContext, create_pass
from edgeops.converters.passes.fusion import rewrite_global_pool
from edgeops.converters.passes.quantize import shallow_convs
from edgeops.profiles import VNNI_FLAGS, host_cpu_flags, load_profile


def _run(model_bytes: bytes, feed: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"]).run(None, feed)


def _ops(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def _ctx():
    return PassContext(profile=load_profile("x86_64-avx512-vnni"))


def _fused(data: bytes, **options) -> tuple[onnx.ModelProto, PassContext]:
    ctx = _ctx()
    pre = create_pass("preprocess", optimize=False)(Artifact("onnx", data=data), ctx)
    out = create_pass("fuse-graph", **options)(pre, ctx)
    return onnx.load_model_from_string(out.data), ctx


class _SelfAttention(torch.nn.Module):
    """Self-attention as model code writes it: fused or separate projections, SDPA or by hand."""

    def __init__(self, d=32, heads=4, separate=False, bias=True, sdpa=True, mask=False):
        super().__init__()
        self.h, self.separate, self.sdpa, self.mask = heads, separate, sdpa, mask
        if separate:
            self.q, self.k, self.v = (torch.nn.Linear(d, d, bias=bias) for _ in range(3))
        else:
            self.qkv = torch.nn.Linear(d, 3 * d, bias=bias)
        self.out = torch.nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (self.q(x), self.k(x), self.v(x)) if self.separate else self.qkv(x).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, self.h, d // self.h).transpose(1, 2) for z in (q, k, v))
        if self.sdpa:
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            scores = q @ k.transpose(-1, -2) * (d // self.h) ** -0.5
            if self.mask:  # a causal mask between the scores and the softmax: not fused
                scores = scores + torch.triu(torch.full((t, t), -1e4), diagonal=1)
            y = torch.softmax(scores, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))


def _export(module, dynamo=True) -> bytes:
    import tempfile
    from pathlib import Path

    module.eval()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        torch.onnx.export(module, (torch.randn(1, 6, 32),), str(path), dynamo=dynamo, opset_version=18, input_names=["x"], output_names=["y"])
        return onnx.load(str(path)).SerializeToString()


@pytest.mark.parametrize(
    "options, dynamo",
    [
        ({"sdpa": True}, True),
        ({"sdpa": False}, True),
        ({"sdpa": True, "separate": True, "bias": False}, True),
        ({"sdpa": False}, False),  # TorchScript exporter: shapes computed at run time, folded first
    ],
    ids=["sdpa-dynamo", "by-hand-dynamo", "separate-projections-no-bias", "by-hand-torchscript"],
)
def test_self_attention_fuses_to_one_op_with_the_same_outputs(options, dynamo):
    torch.manual_seed(0)
    data = _export(_SelfAttention(**options), dynamo=dynamo)
    fused, ctx = _fused(data, attention=True)
    ops = _ops(fused)
    assert ops["Attention"] == 1 and ops["Softmax"] == 0 and ops["Transpose"] == 0, ops
    assert "1 multi-head attention blocks" in ctx.log[-1]
    onnx.checker.check_model(fused)
    x = np.random.default_rng(0).standard_normal((1, 6, 32)).astype(np.float32)
    want, got = _run(data, {"x": x})[0], _run(fused.SerializeToString(), {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_attention_with_a_mask_is_left_alone():
    torch.manual_seed(0)
    data = _export(_SelfAttention(sdpa=False, mask=True))
    fused, ctx = _fused(data, attention=True)
    assert _ops(fused)["Attention"] == 0 and _ops(fused)["Softmax"] == 1
    assert "0 multi-head attention blocks" in ctx.log[-1]


def test_attention_is_not_fused_when_an_inner_tensor_is_used_elsewhere():
    class Probs(_SelfAttention):
        def forward(self, x):
            b, t, d = x.shape
            q, k, v = (z.reshape(b, t, self.h, d // self.h).transpose(1, 2) for z in self.qkv(x).chunk(3, dim=-1))
            p = torch.softmax(q @ k.transpose(-1, -2) * (d // self.h) ** -0.5, dim=-1)
            return self.out((p @ v).transpose(1, 2).reshape(b, t, d)), p  # the probabilities are an output too

    torch.manual_seed(0)
    module = Probs(sdpa=False).eval()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.onnx"
        torch.onnx.export(module, (torch.randn(1, 6, 32),), str(path), dynamo=True, opset_version=18, input_names=["x"], output_names=["y", "p"])
        data = onnx.load(str(path)).SerializeToString()
    fused, _ = _fused(data, attention=True)
    assert _ops(fused)["Attention"] == 0


def test_transformer_sample_fuses_every_block(transformer_onnx):
    data = transformer_onnx["onnx"].read_bytes()
    fused, _ = _fused(data, attention=True)
    assert _ops(fused)["Attention"] == 1  # the fixture has depth 1
    x = np.load(transformer_onnx["validation"])["input"][:4]
    for i in range(len(x)):
        np.testing.assert_allclose(_run(fused.SerializeToString(), {"input": x[i : i + 1]})[0], _run(data, {"input": x[i : i + 1]})[0], rtol=1e-4, atol=1e-5)


def _pool_model(keepdims: int, source: str) -> onnx.ModelProto:
    """input [1, 2, 5, 5] -> (Conv -> Relu | Cast(Greater)) -> ReduceMean over H, W."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    half = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")
    axes = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes")
    if source == "conv":
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["f"])]
    else:  # a mask: the share of bright pixels (like a data-range guard), not a feature map
        nodes = [helper.make_node("Greater", ["x", "half"], ["g"]), helper.make_node("Cast", ["g"], ["f"], to=TensorProto.FLOAT)]
    nodes.append(helper.make_node("ReduceMean", ["f", "axes"], ["y"], keepdims=keepdims))
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, half, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("keepdims", [1, 0])
def test_reduce_mean_of_a_conv_feature_map_becomes_global_average_pool(keepdims):
    model = _pool_model(keepdims, "conv")
    before = model.SerializeToString()
    assert rewrite_global_pool(model) == 1
    ops = _ops(model)
    assert ops["GlobalAveragePool"] == 1 and ops["ReduceMean"] == 0 and ops["Squeeze"] == (0 if keepdims else 1)
    onnx.checker.check_model(model)
    x = np.random.default_rng(1).standard_normal((1, 2, 5, 5)).astype(np.float32)
    want, got = _run(before, {"x": x})[0], _run(model.SerializeToString(), {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_reduce_mean_of_a_mask_stays_float():
    model = _pool_model(0, "mask")
    assert rewrite_global_pool(model) == 0
    assert _ops(model)["ReduceMean"] == 1


def test_fused_attention_becomes_qattention_under_dynamic_int8(transformer_onnx):
    data = transformer_onnx["onnx"].read_bytes()
    ctx = _ctx()
    pre = create_pass("preprocess", optimize=False)(Artifact("onnx", data=data), ctx)
    built = create_pass("quantize-dynamic")(create_pass("fuse-graph", attention=True)(pre, ctx), ctx)
    ops = _ops(onnx.load_model_from_string(built.data))
    assert ops["QAttention"] == 1 and ops["Attention"] == 0
    assert any("Attention -> QAttention" in line for line in ctx.log)


def _conv(name, cin, cout, k, group=1):
    w = numpy_helper.from_array(np.zeros((cout, cin // group, k, k), dtype=np.float32), f"{name}_w")
    return helper.make_node("Conv", ["x", f"{name}_w"], [f"{name}_y"], name=name, group=group, kernel_shape=[k, k]), w


def test_shallow_convs_are_the_thin_first_layers_only():
    specs = {"gray3x3": (1, 32, 3, 1), "rgb3x3": (3, 32, 3, 1), "rgb5x5": (3, 32, 5, 1), "stem7x7": (3, 64, 7, 1), "four3x3": (4, 32, 3, 1), "depthwise": (32, 32, 3, 32)}
    nodes, inits = [], []
    for name, (cin, cout, k, group) in specs.items():
        n, w = _conv(name, cin, cout, k, group)
        nodes.append(n)
        inits.append(w)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)], [], inits)
    assert shallow_convs(helper.make_model(graph)) == ["gray3x3", "rgb3x3", "rgb5x5"]


def test_static_int8_cnn_keeps_its_one_channel_first_conv_float(cnn_files):
    """The digits CNN's first conv (1 input channel) stays float; every other conv is quantized."""
    from edgeops.converters.data import load_dataset
    from edgeops.converters.graph import graph_inputs

    data = cnn_files["onnx"].read_bytes()
    ctx = _ctx()
    ctx.calibration = load_dataset(str(cnn_files["calibration"]), graph_inputs(onnx.load_model_from_string(data)), "calibration")
    pre = create_pass("preprocess")(Artifact("onnx", data=data), ctx)
    built = create_pass("quantize-static", float_shallow_convs=True)(create_pass("fuse-graph", global_pool=True)(pre, ctx), ctx)
    model = onnx.load_model_from_string(built.data)
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = [c for c in convs if producers.get(c.input[1]) is not None and producers[c.input[1]].op_type == "DequantizeLinear"]
    assert len(convs) == 5 and len(quantized) == 4
    first = next(c for c in convs if c not in quantized)
    assert first.input[0] == "input"  # the float one reads the image itself
    assert any("kept float32" in line for line in ctx.log)
    assert _ops(model)["GlobalAveragePool"] == 1 and _ops(model)["ReduceMean"] == 0


def test_dynamic_int8_quantizes_gemm_layers_too():
    """TorchScript exports Linear on 2-D inputs as Gemm; quantize_dynamic renames those, and the
    pass must still quantize every one of them (and nothing else)."""
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mlp.onnx"
        torch.onnx.export(mlp, (torch.randn(1, 16),), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
        data = onnx.load(str(path)).SerializeToString()
    assert _ops(onnx.load_model_from_string(data))["Gemm"] == 3
    ctx = _ctx()
    # The numbers below are compared on this host: without VNNI, onnxruntime's u8 x s8 kernels
    # saturate (0.07 off here on an AVX2 host), which a VNNI device never shows; u8 x u8 weights
    # are exact on both, and the Gemm handling under test is the same for either weight type.
    weight_type = "int8" if VNNI_FLAGS & host_cpu_flags() else "uint8"
    built = create_pass("quantize-dynamic", weight_type=weight_type)(Artifact("onnx", data=data), ctx)
    ops = _ops(onnx.load_model_from_string(built.data))
    assert ops["MatMulInteger"] == 3 and ops["Gemm"] == 0 and ops["MatMul"] == 0, ops
    x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(built.data, {"x": x})[0], _run(data, {"x": x})[0], atol=0.05)


def test_dynamic_int8_without_constant_weights_leaves_the_model_float():
    """Only activation x activation MatMuls: nothing is quantized (None would mean all of them)."""
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"], name="scores")], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in ("a", "b")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    ctx = _ctx()
    built = create_pass("quantize-dynamic")(Artifact("onnx", data=data), ctx)
    assert _ops(onnx.load_model_from_string(built.data)) == {"MatMul": 1}
    assert "left float32" in ctx.log[-1]
