"""`--quantize auto` on onnxruntime profiles: the static int8 model that passes every gate, or float.

The profile's static int8 scheme (MinMax calibration, per-channel weights) is tried first. When
it fails a parity gate, a bounded list of mitigations follows, all with onnxruntime's own
quantization tool (``quantize_static``), none hand written:

1. the profile's calibration method (or ``--calibration-method``);
2. another calibration method: percentile (clips the rare outliers that stretch a MinMax range
   and crush the resolution of everything else), or entropy when percentile was the first;
3. the better of 1-2 with the output-side heads kept float32 (from each graph output back
   through weightless ops such as Sigmoid/Softmax/Reshape to the Conv/MatMul/Gemm feeding it) and
   the first Conv on each graph input: the cheapest exclusion, a softmax or sigmoid head quantized
   to 8 bits is the usual culprit (Inception-v1's ``prob`` output: cosine 0.0 in attempts 1-2);
4. the same plus the :data:`WORST_ACTIVATIONS` nodes whose activations that better attempt
   quantizes worst (onnxruntime's ``qdq_loss_debug``, lowest SQNR). These are often early,
   high-resolution layers, where int8 pays most: attempt 3 comes first so they stay int8 whenever
   the heads alone explain the failure (bench/zoo.py, Inception-v1: see docs/benchmarks.md).
   Skipped when the ranking adds no node to attempt 3's.

(An earlier fifth attempt, the remaining calibration method with the same nodes float32, was
dropped: on the corpus (bench/zoo.py, 2026-12-04) it passed for none of the 17 models, never beat
the others, and its entropy calibration was the slowest step of the failing builds, e.g. ~25 s
of PP-OCRv4 det's 127 s.)

Where the build host can time the result (it has the profile's CPU features), the passing
attempt is built once more with int8 on :data:`WEIGHTED_OPS` only (the Add, Concat, pooling and
activation ops between them float32; same calibration ranges, same float32 nodes) and validated;
when it passes too, the pipeline times the two layouts side by side and ships the faster
(:func:`edgeops.converters.speed_check.compare_layouts`): neither wins on every network
(:func:`weighted_only_alternative`).

At most :data:`MAX_ATTEMPTS` quantizations, and that one more; each calibration method calibrates once (its tensor
ranges go to onnxruntime's ``calibration_cache_path`` and the later attempt with the same method
reuses them). The first attempt passing every gate ships (the attempts go from most to least
int8, and int8 is the fast path on the CPUs these profiles describe). When none passes, the
float32 model ships (scheme "none": the profile's onnxruntime CPU target runs float32), with
the reason. Every attempt, its gate values and why it was kept or rejected go to the build
report (``quantization.attempts``) and the build output.

``--quantize static-int8`` given explicitly runs attempt 1 only and fails its gates as before.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeops.converters.validate import GateLimits, compare_models, evaluate_gates, is_classifier

MAX_ATTEMPTS = 4
SEARCH_FEEDS = 64  # validation feeds each attempt is compared on (the final validation uses them all)
WEIGHTED_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
# Weightless ops a head may pass through between its last weighted node and the graph output.
HEAD_OPS = {"Sigmoid", "Softmax", "LogSoftmax", "Relu", "Clip", "HardSigmoid", "HardSwish", "Tanh", "Reshape", "Transpose", "Flatten",
            "Squeeze", "Unsqueeze", "Add", "Mul", "Div", "Sub", "Concat", "Resize", "GlobalAveragePool", "AveragePool", "MaxPool", "BatchNormalization",
            "Identity", "Slice", "Split", "LeakyRelu", "PRelu"}
HEAD_DEPTH = 12
ACTIVATION_OPS = {"Relu", "Clip", "HardSwish", "HardSigmoid", "Sigmoid", "LeakyRelu", "PRelu", "Tanh", "BatchNormalization"}


@dataclass(frozen=True)
class AttemptSpec:
    """One quantization attempt: calibration method, weight granularity, nodes kept float32."""

    method: str
    per_channel: bool
    exclude_sensitive: bool
    worst_activations: bool = False  # besides the heads, the layers qdq_loss_debug ranks worst
    weighted_only: bool = False  # int8 on WEIGHTED_OPS only: the ops between them stay float32

    def label(self) -> str:
        kept = ""
        if self.exclude_sensitive:
            kept = ", heads and worst-quantized layers float32" if self.worst_activations else ", output heads and first conv float32"
        if self.weighted_only:
            kept += ", int8 on Conv/MatMul/Gemm only (the ops between them float32)"
        return f"static int8, {self.method} calibration, {'per-channel' if self.per_channel else 'per-tensor'} weights{kept}"


@dataclass
class Attempt:
    """What was tried and what came of it (one row of ``quantization.attempts`` in the report)."""

    attempt: int
    tried: str
    method: str
    per_channel: bool
    nodes_float32: list[str]
    gates: list[dict]
    passed: bool
    worst_gate: str = ""
    verdict: str = ""
    calibration: str = ""

    def doc(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        values = ", ".join(f"{g['gate']} {g['value']}{'' if g['passed'] else ' FAIL'}" for g in self.gates if g["gate"] != "max_bundle_mb")
        return f"auto attempt {self.attempt}: {self.tried} ({self.calibration}): {values or 'no parity gate'} -> {self.verdict}"


@dataclass
class SearchResult:
    """The search's outcome: the artifact to ship (the passing attempt's, or the float model when
    none passed), every attempt made, and the one kept."""

    artifact: object
    attempts: list[Attempt] = field(default_factory=list)
    alternative: object = None  # the passing attempt with int8 on WEIGHTED_OPS only, where that passes too
    kept: Attempt | None = None  # the attempt that passed (the alternative's row, if any, comes after it)

    @property
    def passed(self) -> bool:
        """Whether an int8 attempt passed every gate (the one in ``kept``)."""
        return self.kept is not None


def plan(first_method: str, per_channel: bool) -> list[AttemptSpec]:
    """The bounded list of attempts after ``first_method`` fails (see the module docstring)."""
    second = "entropy" if first_method == "percentile" else "percentile"
    return [
        AttemptSpec(first_method, per_channel, False),
        AttemptSpec(second, per_channel, False),
        AttemptSpec("", per_channel, True),  # method filled in: the better of the first two
        AttemptSpec("", per_channel, True, worst_activations=True),
    ][:MAX_ATTEMPTS]


def gate_margin(gates: list[dict]) -> float:
    """How far the worst parity gate is from passing (higher is better; >= 0 passes)."""
    margins = []
    for g in gates:
        if g["gate"] == "max_bundle_mb":
            continue
        if g["gate"] == "finite_outputs" or not isinstance(g["value"], (int, float)):
            margins.append(-1e9)
        elif g["gate"] == "max_accuracy_drop":
            margins.append((g["limit"] - g["value"]) / 100.0)
        else:
            margins.append(g["value"] - g["limit"])
    return min(margins, default=0.0)


def worst_gate(gates: list[dict]) -> str:
    failed = [g for g in gates if not g["passed"]]
    if not failed:
        return ""
    g = min(failed, key=lambda g: gate_margin([g]))
    return f"{g['gate']} {g['value']} vs {g['limit']}"


def sensitive_nodes(model) -> list[str]:
    """Nodes kept float32 by attempts 3 and 4: each output's head back to (and including) the weighted
    node feeding it, and the first weighted Conv on each graph input. Unnamed nodes get the names
    the quantize-static pass gives them (``{op_type}_{index}``)."""
    producer = {}
    consumers: dict[str, list] = {}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
        for out in node.output:
            producer[out] = node
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)
    inits = {i.name for i in model.graph.initializer}
    names: list[str] = []

    def add(node):
        if node.name not in names:
            names.append(node.name)

    for output in model.graph.output:
        frontier, depth = [output.name], 0
        while frontier and depth < HEAD_DEPTH:
            depth += 1
            nxt = []
            for tensor in frontier:
                node = producer.get(tensor)
                if node is None:
                    continue
                if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in inits:
                    add(node)  # the weighted node feeding the output: stop on this branch
                elif node.op_type in HEAD_OPS:
                    add(node)
                    nxt.extend(i for i in node.input if i and i not in inits)
            frontier = nxt
    graph_inputs = {i.name for i in model.graph.input} - inits
    for name in graph_inputs:
        frontier, seen = [name], 0
        while frontier and seen < HEAD_DEPTH:
            seen += 1
            nxt = []
            hit = False
            for tensor in frontier:
                for node in consumers.get(tensor, []):
                    if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in inits:
                        add(node)
                        hit = True
                    else:
                        nxt.extend(node.output)
            frontier = [] if hit else nxt
    return names


def search(built, run_quantize, validate, first_method: str, per_channel: bool, model, rank_nodes=None, alternative: bool = False) -> SearchResult:
    """Try :func:`plan`'s attempts in order until one passes every gate.

    ``run_quantize(spec, nodes, cache)`` returns the quantized artifact; ``validate(artifact)``
    returns its gate rows; ``rank_nodes(artifact)`` (optional) names the nodes whose activations
    the quantized artifact distorts most. All are given by the pipeline (real onnxruntime).
    With ``alternative``, the passing attempt is also built with int8 on :data:`WEIGHTED_OPS` only
    (same calibration, same float32 nodes) and validated: when it passes too it is the result's
    ``alternative``, for the pipeline to time against the attempt (neither layout is faster on
    every network: see :func:`weighted_only_alternative`)."""
    specs = plan(first_method, per_channel)
    attempts: list[Attempt] = []
    heads = sensitive_nodes(model)
    artifacts = {}
    calibrated: set[str] = set()
    better = None  # the better of the attempts without float32 nodes, once they have run
    with tempfile.TemporaryDirectory(prefix="edgeops-calib-") as tmp:
        for spec in specs:
            nodes: list[str] = []
            if spec.exclude_sensitive:
                better = better or max(attempts, key=lambda a: gate_margin(a.gates))
                spec = AttemptSpec(better.method, spec.per_channel, True, spec.worst_activations)
                nodes = list(heads)
                if spec.worst_activations:
                    ranked = rank_nodes(artifacts[better.attempt]) if rank_nodes is not None else []
                    nodes = heads + [n for n in ranked if n not in heads]
                    if nodes == heads and attempts[-1].nodes_float32 == heads:
                        continue  # the ranking adds nothing: attempt 3 already ran these nodes
                if not nodes:
                    continue
            number = len(attempts) + 1
            cache = str(Path(tmp) / f"{spec.method}.json")
            reused = spec.method in calibrated
            calibrated.add(spec.method)
            artifact = run_quantize(spec, nodes, cache)
            artifacts[number] = artifact
            gates = validate(artifact)
            passed = all(g["passed"] for g in gates)
            attempt = Attempt(number, spec.label(), spec.method, spec.per_channel, nodes, gates, passed,
                              worst_gate=worst_gate(gates), calibration=f"{spec.method} ranges {'reused from the cache' if reused else 'calibrated'}")
            attempts.append(attempt)
            if passed:
                attempt.verdict = "kept: passes every gate" + (" (the first int8 attempt that does)" if number > 1 else "")
                result = SearchResult(artifact, attempts, kept=attempt)
                if alternative:
                    result.alternative = weighted_only_alternative(spec, nodes, cache, attempt, run_quantize, validate, attempts)
                return result
            attempt.verdict = f"rejected: {attempt.worst_gate}"
            if all(g["passed"] for g in gates if g["gate"] != "max_bundle_mb"):
                attempt.verdict += " (not a parity gate: other calibrations or float32 nodes cannot help; no further attempt)"
                break
    return SearchResult(built, attempts)


def weighted_only_alternative(spec: AttemptSpec, nodes: list[str], cache: str, passed: Attempt, run_quantize, validate, attempts: list[Attempt]):
    """The passing attempt ``passed`` again with int8 on :data:`WEIGHTED_OPS` only (its
    calibration ranges reused), recorded as one more row of ``attempts``; the artifact when it
    passes every gate too, else None. Full-graph int8 also runs Add, Concat, pooling and
    activations in int8, with a requantization at each; on a Concat-heavy network that costs more
    than it saves (bench/ort_int8_ceiling.py, 2026-12-05, AMD EPYC: DenseNet-121 1.70x over fp32
    full-graph vs 2.19x weighted-only), on others it pays (DDDDOCR det 2.28x vs 1.98x), so the
    pipeline times the two."""
    alt_spec = AttemptSpec(spec.method, spec.per_channel, spec.exclude_sensitive, spec.worst_activations, weighted_only=True)
    artifact = run_quantize(alt_spec, nodes, cache)
    gates = validate(artifact)
    ok = all(g["passed"] for g in gates)
    row = Attempt(len(attempts) + 1, alt_spec.label(), spec.method, spec.per_channel, nodes, gates, ok, worst_gate=worst_gate(gates),
                  verdict=(f"alternative to attempt {passed.attempt}: passes every gate; the faster of the two ships" if ok
                           else f"alternative to attempt {passed.attempt} rejected: {worst_gate(gates)}"),
                  calibration=f"{spec.method} ranges reused from the cache")
    attempts.append(row)
    return artifact if ok else None


def validator(reference_bytes: bytes, feeds, labels, limits: GateLimits, emulate_vnni: bool):
    """``validate(artifact)`` for :func:`search`: both models in onnxruntime at 1 thread on ``feeds``."""
    from edgeops.converters.runtime import OnnxRunner

    ref = OnnxRunner(reference_bytes, threads=1, label="original model")
    classifier = is_classifier(ref.outputs)
    ref_cache: dict = {}

    class CachedRef:  # the original's outputs are computed once for every attempt
        inputs, outputs = ref.inputs, ref.outputs

        def run(self, feed):
            key = id(feed)
            if key not in ref_cache:
                ref_cache[key] = ref.run(feed)
            return ref_cache[key]

    def validate(artifact) -> list[dict]:
        runner = OnnxRunner(artifact.data, threads=1, label="built model", optimize=not emulate_vnni)
        try:
            metrics, _ = compare_models(CachedRef(), runner, feeds, labels, classifier)
        except ValueError as e:
            return [{"gate": "outputs_match", "value": str(e), "limit": "same shapes", "unit": "", "passed": False}]
        return evaluate_gates(metrics, len(artifact.data), limits)

    return validate


WORST_ACTIVATIONS = 8  # nodes kept float32 by attempt 3 besides the heads
DEBUG_FEEDS = 4


def activation_error_nodes(float_bytes: bytes, qdq_bytes: bytes, feeds, k: int = WORST_ACTIVATIONS) -> list[str]:
    """The ``k`` float-model nodes whose output the int8 model quantizes worst: lowest
    signal-to-quantization-noise ratio of the activation across its own QuantizeLinear/
    DequantizeLinear pair, from onnxruntime's ``qdq_loss_debug`` (collect_activations,
    create_activation_matching, compute_activation_error) on the first :data:`DEBUG_FEEDS` feeds.
    Unnamed nodes get the names the quantize-static pass gives them."""
    import math

    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations, compute_activation_error, create_activation_matching, modify_model_output_intermediate_tensors)

    float_model = onnx.load_model_from_string(float_bytes)
    inits = {i.name for i in float_model.graph.initializer}
    by_output = {}
    for index, node in enumerate(float_model.graph.node):
        for out in node.output:
            by_output[out] = (node.name or f"{node.op_type}_{index}", node)
    producer = {}
    for tensor, (name, node) in by_output.items():
        # An activation fused into the layer before it (Conv+Relu) has no int8 kernel of its own:
        # the error is the layer's, so the layer is what stays float (with the activation).
        group = [name]
        while node.op_type in ACTIVATION_OPS and node.input and node.input[0] in by_output:
            name, node = by_output[node.input[0]]
            group.append(name)
            if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in inits:
                break
        producer[tensor] = group
    chosen = list(feeds[:DEBUG_FEEDS])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(chosen)

        def get_next(self):
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="edgeops-qdq-debug-") as tmp:
        paths = {}
        for role, data in (("float", float_bytes), ("qdq", qdq_bytes)):
            src, aug = Path(tmp) / f"{role}.onnx", Path(tmp) / f"{role}.aug.onnx"
            src.write_bytes(data)
            modify_model_output_intermediate_tensors(str(src), str(aug))
            paths[role] = str(aug)
        float_acts = collect_activations(paths["float"], Reader(), execution_providers=["CPUExecutionProvider"])
        qdq_acts = collect_activations(paths["qdq"], Reader(), execution_providers=["CPUExecutionProvider"])
    errors = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
    ranked = sorted((e["qdq_err"], t) for t, e in errors.items() if t in producer and math.isfinite(e.get("qdq_err", math.inf)))
    names: list[str] = []
    for _, tensor in ranked:
        names.extend(n for n in producer[tensor] if n not in names)
        if len(names) >= k:
            break
    return names


HISTOGRAM_BUDGET_BYTES = 2 * 1024**3  # onnxruntime's histogram calibrators hold every activation of every feed at once


def activation_bytes(model) -> int:
    """Bytes of one feed's float activations (tensors with a known shape after shape inference)."""
    import numpy as np

    def size(vi) -> int:
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        return int(np.prod(dims)) * 4 if dims and all(d > 0 for d in dims) else 0

    total = sum(size(vi) for vi in list(model.graph.value_info) + list(model.graph.output))
    if not model.graph.value_info:  # no inferred shapes: assume every node's output is as large as the inputs
        total = max(total, sum(size(vi) for vi in model.graph.input) * len(model.graph.node))
    return total


def histogram_feeds(model, wanted: int) -> int:
    """Calibration feeds percentile/entropy may use within :data:`HISTOGRAM_BUDGET_BYTES` (0: none)."""
    per_feed = max(activation_bytes(model), 1)
    return min(wanted, HISTOGRAM_BUDGET_BYTES // per_feed)
