"""The normalize pass (onnxslim) folds constant weights into initializers, so the scheme choice
sees where the weights are; the analysis also reads weights held in Constant nodes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from edgeops.converters.graph import classify_onnx
from edgeops.converters.passes import Artifact, PassContext, create_pass
from edgeops.profiles import load_profile
from tests.support.onnx_models import conv_net


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_weights_computed_by_constant_subgraphs_are_folded_and_seen():
    model = conv_net(opset=13, style="constant-subgraph")
    before = classify_onnx(model)
    assert before.kind != "conv" and before.conv_share == 0  # Conv weights are Mul outputs, not tensors
    ctx = PassContext(profile=load_profile("x86_64-avx512-vnni"))
    out = create_pass("normalize")(Artifact("onnx", data=model.SerializeToString()), ctx)
    normalized = onnx.load_model_from_string(out.data)
    assert not any(n.op_type in ("Constant", "Mul") for n in normalized.graph.node)
    after = classify_onnx(normalized)
    assert after.kind == "conv" and after.conv_share > 0.5, after
    assert ctx.report["normalization"]["constants_folded"] == 12 and ctx.log[-1].startswith("normalize: onnxslim")
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(_run(normalized, x), _run(model, x), rtol=1e-4, atol=1e-5)
    # Same input, same bytes: builds stay reproducible.
    assert create_pass("normalize")(Artifact("onnx", data=model.SerializeToString()), ctx).data == out.data


def test_weights_in_constant_nodes_count_without_normalization():
    kind = classify_onnx(conv_net(opset=11, style="constant-nodes"))
    assert kind.kind == "conv" and kind.conv_share > 0.5, kind
