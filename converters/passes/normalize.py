"""Normalize pass: fold constants into initializers and simplify the graph with onnxslim.

Third-party exports keep weights in ``Constant`` nodes (Paddle) or compute them at run time
from constant subgraphs (``ConstantOfShape``, ``Mul`` of constants, shape arithmetic); the
analysis that picks the quantization scheme and onnxruntime's quantizer look for weights in
initializers, so such a model looked like "Conv holds 0% of weights". onnxslim folds constant
subgraphs into initializers and removes duplicate nodes and weights, keeping graph input and output
names (two of its steps are left out, see :data:`SKIPPED_STEPS`).

onnxslim was chosen by measurement (bench/normalize.py, quoted in docs/benchmarks.md): after the
opset pass it kept every measured model runnable with outputs equal to the original's, where
onnx-simplifier and onnxruntime's basic offline optimization broke some. Quantization nodes
(``DequantizeLinear`` of int8 weights) are left as they are, so an already-quantized model stays
quantized.

If onnxslim fails on a model, the build goes on with the model as given, with a warning.
"""

from __future__ import annotations

from collections import Counter

from edgeops.converters.passes import Artifact, Pass, PassContext, PassOptions, register_pass

CONSTANT_OPS = ("Constant", "ConstantOfShape")


class NormalizeOptions(PassOptions):
    pass


@register_pass
class Normalize(Pass):
    name = "normalize"
    description = "fold constants into initializers, remove dead/duplicate nodes, fuse simple patterns (onnxslim)"
    Options = NormalizeOptions

    def run(self, artifact: Artifact, ctx: PassContext) -> Artifact:
        import onnx

        model = onnx.load_model_from_string(artifact.data)
        before = _summary(model)
        try:
            slimmed = slim(model)
        except Exception as e:  # onnxslim raises whatever its graph surgery or shape inference meets
            ctx.warn(f"normalize: onnxslim failed ({type(e).__name__}: {str(e).strip()[:200]}); the model is analysed and quantized as given")
            return artifact
        if slimmed is None or _io_names(slimmed) != _io_names(model):
            ctx.warn("normalize: onnxslim changed the model's inputs/outputs; the model is analysed and quantized as given")
            return artifact
        after = _summary(slimmed)
        folded = before["constants"] - after["constants"]
        ctx.log.append(
            f"normalize: onnxslim {_version()}: {before['nodes']} -> {after['nodes']} nodes, "
            f"{folded} Constant/ConstantOfShape node{'s' if folded != 1 else ''} folded into initializers "
            f"({before['initializers']} -> {after['initializers']} initializers)"
        )
        ctx.report["normalization"] = {"tool": f"onnxslim {_version()}", "nodes_before": before["nodes"], "nodes_after": after["nodes"], "constants_folded": folded}
        return Artifact("onnx", data=slimmed.SerializeToString())


# onnxslim steps left out, each measured to break models (bench/normalize.py): its pattern fusions
# (Reshape/Transpose eliminations, MatMul+Add -> Gemm) hide the multi-head attention pattern the
# fuse-graph pass turns into one QAttention kernel, and its dead-node elimination changed the output
# of a third-party OCR model (ddddocr, Reshape to a declared [1, -1] output). The packager's own
# fusions and onnxruntime's optimizer do the fusing later.
SKIPPED_STEPS = ("graph_fusion", "dead_node_elimination")


def slim(model):
    """``model`` normalized by onnxslim as this pass uses it (constant folding, subexpression
    elimination, weight tying, shape inference; see SKIPPED_STEPS)."""
    import logging

    import onnxslim

    logging.getLogger("onnxslim").setLevel(logging.WARNING)  # its summary table; the build prints its own
    return onnxslim.slim(model, skip_optimizations=list(SKIPPED_STEPS))


def _summary(model) -> dict[str, int]:
    ops = Counter(n.op_type for n in model.graph.node)
    return {"nodes": len(model.graph.node), "constants": sum(ops[o] for o in CONSTANT_OPS), "initializers": len(model.graph.initializer)}


def _io_names(model) -> tuple[list[str], list[str]]:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output]


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("onnxslim")
    except metadata.PackageNotFoundError:
        return "?"
