"""Quantization passes for onnxruntime targets, all built on onnxruntime's own tooling.

* ``quantize-static``: QDQ format, per-channel weights, activation/weight types from the
  profile, calibration with MinMax / Entropy / Percentile over the calibration data; optionally
  shallow convolutions (first layers on 1-3 channel images) stay float32.
* ``quantize-dynamic``: weights int8 ahead of time, activations quantized at run time;
  good for Linear/MatMul-heavy models, slower than fp32 for conv nets on CPU. Fused
  ``com.microsoft.Attention`` nodes (see :mod:`~edgeops.converters.passes.fusion`) become QAttention.
* ``fp16``: float32 -> float16 weights and compute with float32 graph I/O, using the converter
  that ships with onnxruntime (``onnxruntime.transformers.float16``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgeops.converters.errors import CalibrationMissingError
from edgeops.converters.passes import Artifact, Pass, PassContext, PassOptions, register_pass


# A Conv this shallow (e.g. 3x3 over a 1- or 3-channel image) gives the int8 GEMM too little depth
# to amortise im2col and requantization. Measured with onnxruntime 1.32 on an AVX-512-VNNI Xeon,
# each Conv followed by a 32-channel int8 conv: 1 -> 32 ch 3x3 at 32x32, int8 92 us vs float 77 us;
# 3 -> 16 ch 3x3 at 64x64, 204 vs 168 us; 3 -> 32 ch 5x5, 114 vs 108 us; but 4 -> 32 ch 3x3,
# 78 vs 90 us and the 3 -> 64 ch 7x7 stride-2 ResNet stem at 112x112, 710 vs 881 us favour int8.
SHALLOW_CONV_CHANNELS = 4
SHALLOW_CONV_DEPTH = 128


class StaticQuantOptions(PassOptions):
    activation_type: Literal["uint8", "int8"] = Field(default="uint8", description="activation integer type (profile quantization.activation_type)")
    weight_type: Literal["int8", "uint8"] = Field(default="int8", description="weight integer type (profile quantization.weight_type)")
    per_channel: bool = Field(default=True, description="one scale per output channel of each weight")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(default="minmax", description="how activation ranges are estimated")
    reduce_range: bool = Field(default=False, description="7-bit weights: avoids u8 x s8 saturation on x86-64 CPUs without VNNI")
    float_shallow_convs: bool = Field(
        default=False,
        description=f"keep Convs with fewer than {SHALLOW_CONV_CHANNELS} input channels and a reduction depth (in-channels x kernel) under "
        f"{SHALLOW_CONV_DEPTH} in float32 (typically the first layer on a 1- or 3-channel image): onnxruntime's x86-64 int8 conv kernels are slower than fp32 there",
    )
    max_calibration_samples: int = Field(default=256, ge=1, le=100000, description="calibration feeds used at most")
    nodes_to_exclude: list[str] = Field(default_factory=list, description="node names kept in float32 (e.g. the sensitive output heads `--quantize auto` excludes after a failed gate)")
    op_types: list[str] = Field(default_factory=list, description="only these op types get int8 (e.g. Conv, MatMul, Gemm; the ops between them stay float32); empty: every op onnxruntime quantizes")
    calibration_cache: str | None = Field(default=None, description="onnxruntime calibration cache (JSON tensor ranges): written on first use, reused by later attempts with the same method")


@register_pass
class QuantizeStatic(Pass):
    name = "quantize-static"
    description = "static QDQ int8 with onnxruntime.quantization.quantize_static"
    Options = StaticQuantOptions

    def run(self, artifact: Artifact, ctx: PassContext) -> Artifact:
        import onnx
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

        if ctx.calibration is None:
            raise CalibrationMissingError(
                "static int8 quantization needs calibration data: pass --calibration DATA (.npy, .npz keyed by input name, or an image folder; "
                "100-500 representative samples), or choose --quantize dynamic-int8 / fp16 / none"
            )
        model = onnx.load_model_from_string(artifact.data)
        from edgeops.converters.graph import graph_inputs

        specs = graph_inputs(model)
        feeds = ctx.calibration.batches(specs, limit=self.options.max_calibration_samples)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter(feeds)

            def get_next(self):
                return next(self._it, None)

            def rewind(self):
                self._it = iter(feeds)

        qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
        excluded = shallow_convs(model) if self.options.float_shallow_convs else []
        excluded += [n for n in self.options.nodes_to_exclude if n not in excluded]
        with tempfile.TemporaryDirectory(prefix="edgeops-q-") as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            src.write_bytes(model.SerializeToString())  # nodes named by shallow_convs
            quantize_static(
                str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=self.options.per_channel, reduce_range=self.options.reduce_range,
                activation_type=qtype[self.options.activation_type], weight_type=qtype[self.options.weight_type],
                calibrate_method=method[self.options.calibration_method],
                calibration_providers=["CPUExecutionProvider"],
                nodes_to_exclude=excluded,
                op_types_to_quantize=self.options.op_types or None,
                calibration_cache_path=self.options.calibration_cache,
                extra_options={"ActivationSymmetric": self.options.activation_type == "int8", "WeightSymmetric": True},
            )
            out = onnx.load(str(dst)).SerializeToString()
        ctx.log.append(
            f"quantize-static: QDQ, activations {self.options.activation_type}, weights {self.options.weight_type} "
            f"{'per-channel' if self.options.per_channel else 'per-tensor'}, calibration {self.options.calibration_method} on {len(feeds)} feeds"
        )
        shallow = [n for n in excluded if n not in self.options.nodes_to_exclude]
        if shallow:
            ctx.log.append(f"quantize-static: kept float32 (too shallow for int8 kernels to pay off): {', '.join(shallow)}")
        if self.options.nodes_to_exclude:
            ctx.log.append(f"quantize-static: kept float32 (sensitive to int8): {', '.join(self.options.nodes_to_exclude)}")
        if self.options.op_types:
            ctx.log.append(f"quantize-static: int8 on {', '.join(self.options.op_types)} only; every other op float32")
        return Artifact("onnx", data=out)


def shallow_convs(model) -> list[str]:
    """Names of group-1 Convs with a constant weight of < SHALLOW_CONV_CHANNELS input channels and
    in-channels x kernel < SHALLOW_CONV_DEPTH (unnamed nodes get names). Depthwise convs are not
    included: onnxruntime has dedicated int8 depthwise kernels."""
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    names = []
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in dims:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w = dims[node.input[1]]
        if group == 1 and len(w) >= 3 and w[1] < SHALLOW_CONV_CHANNELS and int(np.prod(w[1:])) < SHALLOW_CONV_DEPTH:
            names.append(node.name)
    return names


class DynamicQuantOptions(PassOptions):
    weight_type: Literal["int8", "uint8"] = Field(default="int8", description="weight integer type")
    per_channel: bool = Field(default=False, description="one scale per output channel of each weight")


@register_pass
class QuantizeDynamic(Pass):
    name = "quantize-dynamic"
    description = "dynamic int8 with onnxruntime.quantization.quantize_dynamic (MatMul/Gemm weights int8)"
    Options = DynamicQuantOptions

    def run(self, artifact: Artifact, ctx: PassContext) -> Artifact:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.onnx_model import ONNXModel

        model = onnx.load_model_from_string(artifact.data)
        # quantize_dynamic first rewrites Gemm as MatMul (+ Add) under new node names, which would
        # then miss nodes_to_quantize; doing that rewrite here, with the same onnxruntime function,
        # lists the nodes under the names quantize_dynamic sees.
        ONNXModel(model).replace_gemm_with_matmul()
        weighted = _weight_nodes(model)
        if not weighted:
            # nodes_to_quantize=None would mean *every* MatMul, attention scores included.
            ctx.log.append("quantize-dynamic: no MatMul/Gemm/Attention node with a constant weight; model left float32")
            return Artifact("onnx", data=model.SerializeToString())
        with tempfile.TemporaryDirectory(prefix="edgeops-q-") as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            src.write_bytes(model.SerializeToString())
            quantize_dynamic(
                str(src), str(dst), per_channel=self.options.per_channel,
                weight_type={"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[self.options.weight_type],
                # Conv stays float: dynamic ConvInteger is slower than fp32 Conv on CPUs. Only
                # MatMul/Gemm with a constant weight are quantized: activation x activation
                # products (attention scores) lose accuracy and gain no speed as int8. A fused
                # com.microsoft.Attention (see fusion.py) becomes QAttention: int8 QKV weights,
                # scores and softmax in float inside the one kernel.
                op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                nodes_to_quantize=weighted,
            )
            out = onnx.load(str(dst)).SerializeToString()
        attention = sum(1 for n in model.graph.node if n.op_type == "Attention" and n.name in weighted)
        ctx.log.append(
            f"quantize-dynamic: {len(weighted) - attention} MatMul/Gemm nodes with constant weights, {self.options.weight_type} "
            f"{'per-channel' if self.options.per_channel else 'per-tensor'}" + (f"; {attention} fused Attention -> QAttention (int8 QKV weights, scores and softmax in float)" if attention else "")
        )
        return Artifact("onnx", data=out)


def _weight_nodes(model) -> list[str]:
    """Names of MatMul/Gemm/Attention nodes whose second input is an initializer (unnamed nodes get names)."""
    inits = {i.name for i in model.graph.initializer}
    names = []
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
        if node.op_type in ("MatMul", "Gemm", "Attention") and len(node.input) > 1 and node.input[1] in inits:
            names.append(node.name)
    return names


class Fp16Options(PassOptions):
    keep_io_types: bool = Field(default=True, description="keep float32 graph inputs/outputs (casts inserted at the edges)")
    op_block_list: list[str] = Field(default_factory=list, description="extra op types kept in float32")


@register_pass
class ConvertFp16(Pass):
    name = "fp16"
    description = "float32 -> float16 with onnxruntime.transformers.float16 (I/O kept float32)"
    Options = Fp16Options

    def run(self, artifact: Artifact, ctx: PassContext) -> Artifact:
        import onnx
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        model = onnx.load_model_from_string(artifact.data)
        block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(self.options.op_block_list))
        converted = convert_float_to_float16(model, keep_io_types=self.options.keep_io_types, op_block_list=block)
        _topological_sort(converted.graph)  # the converter appends its I/O casts at the end
        onnx.checker.check_model(converted)
        ctx.log.append(f"fp16: weights and compute float16, I/O {'float32' if self.options.keep_io_types else 'float16'}")
        return Artifact("onnx", data=converted.SerializeToString())


def _topological_sort(graph) -> None:
    """Reorder graph.node so every node comes after the producers of its inputs (stable)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            # Subgraph inputs from the outer scope are not tracked here; only direct inputs count.
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            ordered.extend(rest)  # a cycle or outer-scope names: keep the remaining order
            break
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)
