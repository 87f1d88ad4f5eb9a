"""Opset conversion pass: bring a model's default-domain opset into the profile's range.

Third-party models arrive at any opset from 7 (old Caffe2 / Paddle exports at 9-12) to the
newest onnx knows. ``onnx.version_converter`` adapts every node whose operator changed between
the two versions (e.g. ``Upsample`` -> ``Resize``, ``Split``'s attribute -> input). What was
converted (from, to, the operators whose definition changed and how many nodes use each) is
written to the pass log and to the build report. A model the converter cannot adapt is refused
with :class:`~edgeops.converters.errors.OpsetConversionError` naming the node(s) and operator.
"""

from __future__ import annotations

import re

from pydantic import Field

from edgeops.converters.errors import OpsetConversionError
from edgeops.converters.graph import default_opset, iter_nodes
from edgeops.converters.passes import Artifact, Pass, PassContext, PassOptions, register_pass

MIN_SOURCE_OPSET = 7  # onnx.version_converter's adapters and onnxruntime both start here


class OpsetOptions(PassOptions):
    target: int = Field(ge=MIN_SOURCE_OPSET, description="default-domain (ai.onnx) opset to convert the model to")


@register_pass
class ConvertOpset(Pass):
    name = "convert-opset"
    description = "convert the model's ai.onnx opset with onnx.version_converter (reported: from, to, operators touched)"
    Options = OpsetOptions

    def run(self, artifact: Artifact, ctx: PassContext) -> Artifact:
        import onnx

        model = onnx.load_model_from_string(artifact.data)
        source, target = default_opset(model), self.options.target
        if source == target:
            return artifact
        touched = ops_touched(model, source, target)
        converted = convert(model, target)
        record = {"from": source, "to": target, "tool": f"onnx.version_converter (onnx {onnx.__version__})", "ops_touched": touched}
        ctx.report["opset_conversion"] = record
        listed = ", ".join(f"{op} ({n} node{'s' if n != 1 else ''})" for op, n in touched.items()) or "none (no operator definition changed)"
        ctx.log.append(f"convert-opset: ai.onnx opset {source} -> {target} with onnx.version_converter; operators whose definition changed: {listed}")
        return Artifact("onnx", data=converted.SerializeToString())


def convert(model, target: int):
    """``model`` converted to ai.onnx opset ``target``; :class:`OpsetConversionError` names what cannot be."""
    import onnx
    from onnx import helper, version_converter

    source = default_opset(model)
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as e:  # the converter raises RuntimeError / IndexError / ValidationError with C++ text
        raise OpsetConversionError(_explain(model, source, target, e)) from e
    # onnx.version_converter keeps the old IR version; opsets >= 13 need IR >= 7 (onnxruntime's
    # quantization tools read IR-7 features such as initializers not listed as inputs).
    needed = helper.find_min_ir_version_for(list(converted.opset_import), ignore_unknown=True)
    converted.ir_version = max(converted.ir_version, needed)
    try:
        onnx.checker.check_model(converted)
    except onnx.checker.ValidationError as e:
        raise OpsetConversionError(_explain(model, source, target, e)) from e
    return converted


def ops_touched(model, source: int, target: int) -> dict[str, int]:
    """Default-domain operators of ``model`` whose definition differs between the two opsets, with node counts."""
    from onnx import defs

    counts: dict[str, int] = {}
    for _, node in iter_nodes(model.graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        if _since(defs, node.op_type, source) != _since(defs, node.op_type, target):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _since(defs, op: str, opset: int) -> int | None:
    try:
        return defs.get_schema(op, opset, "").since_version
    except Exception:  # op not defined at that opset (removed, or not yet added)
        return None


def _explain(model, source: int, target: int, error: Exception) -> str:
    """The refusal: which nodes (and ops) the converter stopped at, and the way out."""
    text = str(error).strip()
    detail = text.splitlines()[-1] if text else type(error).__name__
    op_types = {node.op_type for _, node in iter_nodes(model.graph)}
    named = [op for op in sorted(op_types, key=len, reverse=True) if re.search(rf"\b{re.escape(op)}\b", text)]
    culprits = named[:1] or list(ops_touched(model, source, target))
    nodes = [(where, node.op_type) for where, node in iter_nodes(model.graph) if node.op_type in culprits]
    listed = ", ".join(f"node '{w}' (op {op})" for w, op in nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
    where = f" at {listed}" if listed else ""
    return (
        f"cannot convert the model from ONNX opset {source} to {target}{where}: onnx.version_converter says '{detail[:300]}'. "
        f"Re-export the model at an opset the profile takes (torch.onnx.export(..., opset_version={target}), paddle2onnx --opset_version {target}, "
        f"tf2onnx --opset {target}), or replace that operator in the source model"
    )
