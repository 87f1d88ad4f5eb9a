"""``--quantize auto`` on LiteRT profiles: the int8 model ships only if it passes the parity gates.

ai-edge-quantizer's recipes have no knobs that the onnxruntime path's search turns (calibration
method, layers kept float), so there is one attempt: the profile's int8 recipe, compared with the
float ``.tflite`` in ai-edge-litert on the validation data (or generated inputs). When a parity gate
fails, the float model ships and the report says which gate and by how much, where before the
build stopped with a gate failure the user could do nothing about but ``--quantize none``.

MediaPipe's models (mediapipe 0.10.14's wheel, 14 .tflite files) under dynamic int8 on generated
inputs: 8 pass, the hand landmark models (worst cosine 0.79-0.93), the full palm detector (0.93),
the full pose landmark model and both selfie segmenters (0.0-0.91) do not. ai-edge-quantizer's
weight-only int8 was no way out: 0.84 and 0.95 on the hand models, 0.0 on pose and selfie.

The Edge TPU (full-int8) runs fully integer models only, so no float model is shipped in its stead:
its gate failures stand.
"""

from __future__ import annotations

from edgeops.converters.choose import Choice
from edgeops.converters.passes import Artifact, PassContext
from edgeops.converters.quant_search import Attempt, SEARCH_FEEDS, worst_gate
from edgeops.converters.validate import GateLimits, compare_models, evaluate_gates, is_classifier


def int8_or_float(reference: Artifact, built: Artifact, choice: Choice, data, limits: GateLimits, ctx: PassContext) -> tuple[Artifact, Choice]:
    """(artifact, choice): ``built`` (the int8 model) when it passes every parity gate against
    ``reference`` (the float model) on ``data`` (a Dataset), else ``reference`` with a Choice that
    says why; the comparison goes to ``quantization.attempts`` in the report either way."""
    from edgeops.converters.runtime import TfliteRunner

    ref = TfliteRunner(reference.data, label="original model")
    int8 = TfliteRunner(built.data, label="int8 model")
    feeds = data.batches(ref.inputs, limit=SEARCH_FEEDS)
    labels = data.label_batches(ref.inputs, limit=SEARCH_FEEDS)
    metrics, _ = compare_models(ref, int8, feeds, labels, is_classifier(ref.outputs))
    gates = [g for g in evaluate_gates(metrics, len(built.data), limits) if g["gate"] != "max_bundle_mb"]  # parity only: float is no smaller
    passed = all(g["passed"] for g in gates)
    attempt = Attempt(1, f"{choice.scheme} (ai-edge-quantizer)", "", True, [], gates, passed, worst_gate(gates),
                      "passed every parity gate" if passed else "failed a parity gate: the float model ships", f"{len(feeds)} validation feed(s)")
    ctx.report["quantization_attempts"] = [attempt.doc()]
    ctx.log.append(attempt.line())
    if passed:
        return built, choice
    return reference, Choice("none", f"{choice.reason}; but the {choice.scheme} model failed a parity gate ({attempt.worst_gate}), so the float model ships")
