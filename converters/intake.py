"""What a user's ONNX model goes through before it is analysed and quantized.

1. operators: a node whose (domain, op) the profile's runtime cannot run is refused, naming node,
   op, domain and the profiles that would take it (:mod:`edgeops.converters.operators`);
2. opset: outside the profile's [min_opset, max_opset] the model is converted with
   ``onnx.version_converter`` (pass ``convert-opset``, reported: from, to, operators touched);
3. normalization: constants folded into initializers, dead and duplicate nodes removed
   (pass ``normalize``, onnxslim), so the scheme choice sees where the weights really are.

The validation reference stays the model as the user gave it: the comparison against it covers
the conversion and the normalization too.
"""

from __future__ import annotations

from edgeops.converters.graph import default_opset
from edgeops.converters.operators import check_operators
from edgeops.converters.passes import Artifact, PassContext, create_pass


def prepare_onnx(artifact: Artifact, profile, ctx: PassContext, step, label: str):
    """(artifact, ModelProto) after the operator check, opset conversion and normalization."""
    import onnx

    model = onnx.load_model_from_string(artifact.data)
    check_operators(model, profile, label)
    opset, c = default_opset(model), profile.constraints
    if opset and not c.min_opset <= opset <= c.max_opset:  # 0: no ai.onnx import (an ai.onnx.ml-only model)
        # The nearest end of the range: the fewest operator definitions change.
        target = c.min_opset if opset < c.min_opset else c.max_opset
        with step(f"converting ONNX opset {opset} -> {target}"):
            artifact = create_pass("convert-opset", target=target)(artifact, ctx)
    with step("normalizing the graph (onnxslim: constant folding, dead/duplicate nodes)"):
        artifact = create_pass("normalize")(artifact, ctx)
    return artifact, onnx.load_model_from_string(artifact.data)
