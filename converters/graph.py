"""Facts about an ONNX graph that the packager decides on: I/O specs, operators, opset,
dynamic dimensions, and what kind of model it is (conv net or Linear/MatMul-heavy).

Subgraphs (If / Loop / Scan bodies) are walked too, so an unsupported operator hidden inside
a branch is still found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from edgeops.bundle import TensorSpec

# ONNX TensorProto element type -> numpy dtype name
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "float64"}


def onnx_dtype_name(elem_type: int) -> str:
    """numpy dtype name of an ONNX element type (unknown types keep their number)."""
    return _ONNX_DTYPES.get(elem_type, f"onnx-type-{elem_type}")


def _value_spec(value_info) -> TensorSpec:
    t = value_info.type.tensor_type
    shape: list[int | str] = []
    for i, d in enumerate(t.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(int(d.dim_value))
        else:
            shape.append(d.dim_param or f"dim{i}")
    return TensorSpec(name=value_info.name, dtype=onnx_dtype_name(t.elem_type), shape=shape)


def graph_inputs(model) -> list[TensorSpec]:
    """Real inputs of the graph (initializers listed as inputs by old exporters are skipped)."""
    inits = {i.name for i in model.graph.initializer}
    return [_value_spec(v) for v in model.graph.input if v.name not in inits]


def graph_outputs(model) -> list[TensorSpec]:
    """Outputs of the graph."""
    return [_value_spec(v) for v in model.graph.output]


def iter_nodes(graph, path: str = "") -> Iterator[tuple[str, object]]:
    """Every node of the graph and of its subgraphs, with a readable location path."""
    for index, node in enumerate(graph.node):
        label = node.name or f"{node.op_type}_{index}"
        where = f"{path}/{label}" if path else label
        yield where, node
        for attr in node.attribute:
            if attr.g and attr.g.node:
                yield from iter_nodes(attr.g, f"{where}.{attr.name}")
            for sub in attr.graphs:
                yield from iter_nodes(sub, f"{where}.{attr.name}")


def default_opset(model) -> int:
    """Version of the default ("" / ai.onnx) operator set the model imports."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def dynamic_inputs(specs: list[TensorSpec]) -> dict[str, list[int | str]]:
    """Inputs that have at least one non-fixed dimension."""
    return {s.name: s.shape for s in specs if any(not isinstance(d, int) for d in s.shape)}


def set_input_shapes(model, shapes: dict[str, list[int]]) -> None:
    """Fix the dims of named graph inputs in place (for --input-shape); unknown names raise KeyError."""
    by_name = {v.name: v for v in model.graph.input}
    for name, dims in shapes.items():
        if name not in by_name:
            raise KeyError(name)
        tshape = by_name[name].type.tensor_type.shape
        if len(tshape.dim) != len(dims):
            raise ValueError(f"input '{name}' has rank {len(tshape.dim)}, --input-shape gives {len(dims)} dims")
        for d, value in zip(tshape.dim, dims):
            fixed = d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            if fixed is not None and fixed != value:
                raise ValueError(f"input '{name}' has fixed dim {fixed} where --input-shape gives {value}")
            d.Clear()
            d.dim_value = int(value)


# Operators only an already-quantized model holds (QDQ, QOperator and dynamic quantization forms).
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
    "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearConcat",
    "QLinearSoftmax", "QGemm", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits", "DynamicQuantizeLSTM",
})


def quantized_ops(model) -> dict[str, int]:
    """Quantization operators in the graph (subgraphs included) and how many nodes use each."""
    counts: dict[str, int] = {}
    for _, node in iter_nodes(model.graph):
        if node.op_type in QUANTIZED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def describe_quantization(ops: dict[str, int]) -> str:
    """'QDQ (12 QuantizeLinear, 20 DequantizeLinear)' etc. for a :func:`quantized_ops` result."""
    forms = []
    if {"QuantizeLinear", "DequantizeLinear"} & set(ops):
        forms.append("QDQ")
    if any(op.startswith("QLinear") or op in ("ConvInteger", "MatMulInteger", "QGemm", "QAttention") for op in ops):
        forms.append("QOperator")
    if any(op.startswith("DynamicQuantize") or op in ("MatMulIntegerToFloat", "MatMulNBits") for op in ops):
        forms.append("dynamic")
    return f"{'/'.join(forms)} ({', '.join(f'{n} {op}' for op, n in ops.items())})"


@dataclass(frozen=True)
class ModelKind:
    """What the weights of a model are spent on; decides the quantization scheme under auto."""

    kind: str  # "conv" | "transformer" | "linear" | "other"
    conv_share: float  # fraction of weight elements in Conv / ConvTranspose
    matmul_share: float  # fraction in MatMul / Gemm
    has_attention: bool
    quantized: dict[str, int] = field(default_factory=dict)  # quantization ops already in the model (see quantized_ops)

    def describe(self) -> str:
        text = f"{self.kind} (Conv holds {self.conv_share:.0%} of weights, MatMul/Gemm {self.matmul_share:.0%}{', attention present' if self.has_attention else ''})"
        return text + (f", already quantized: {describe_quantization(self.quantized)}" if self.quantized else "")


def classify_counts(conv: int, matmul: int, total: int, has_attention: bool) -> ModelKind:
    """Classify from weight element counts (shared by the ONNX and torch analyses)."""
    total = max(total, 1)
    conv_share, mm_share = conv / total, matmul / total
    if conv_share >= 0.5:
        kind = "conv"
    elif mm_share >= 0.5:
        kind = "transformer" if has_attention else "linear"
    else:
        kind = "other"
    return ModelKind(kind, conv_share, mm_share, has_attention)


def classify_onnx(model) -> ModelKind:
    """Classify an ONNX model by where its weight elements are used.

    Weights are initializers or, in exports that keep them in ``Constant`` nodes (Paddle), those
    nodes' tensors; weights computed by constant subgraphs are only seen after the normalize pass
    (:mod:`edgeops.converters.passes.normalize`) folded them into initializers.
    """
    sizes = {i.name: int(np.prod(i.dims)) if len(i.dims) else 1 for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                sizes[node.output[0]] = int(np.prod(value.dims)) if len(value.dims) else 1
    conv = matmul = 0
    has_attention = False
    for _, node in iter_nodes(model.graph):
        weight = sum(sizes.get(name, 0) for name in node.input[1:2])
        if node.op_type in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv"):
            conv += weight
        elif node.op_type in ("MatMul", "Gemm", "MatMulInteger", "QLinearMatMul"):
            matmul += sum(sizes.get(name, 0) for name in node.input[:2])
        elif node.op_type in ("Softmax", "Attention", "MultiHeadAttention"):
            has_attention = True
    found = classify_counts(conv, matmul, sum(sizes.values()), has_attention)
    quantized = quantized_ops(model)
    return ModelKind(found.kind, found.conv_share, found.matmul_share, found.has_attention, quantized) if quantized else found


def classify_torch(module) -> ModelKind:
    """Classify a torch module by parameter counts of its Conv and Linear layers."""
    import torch.nn as nn

    conv = linear = total = 0
    has_attention = False
    for sub in module.modules():
        own = sum(p.numel() for p in sub.parameters(recurse=False))
        total += own
        if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)):
            conv += own
        elif isinstance(sub, nn.Linear):
            linear += own
        elif isinstance(sub, nn.MultiheadAttention):
            linear += own
            has_attention = True
        elif isinstance(sub, nn.LayerNorm) or "attention" in type(sub).__name__.lower() or "encoder" in type(sub).__name__.lower():
            has_attention = True
    return classify_counts(conv, linear, total, has_attention)
