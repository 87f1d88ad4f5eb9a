"""`--quantize auto` on onnxruntime profiles: the bounded int8 attempts, their bookkeeping, and a real corpus model.

The unit tests drive :func:`quant_search.search` with a quantize function that only records what it
was asked for and a validate function returning gate rows, to pin the order, the bound, the
reuse of calibration, the choice of the better method and the float fallback. The slow tests
build a real third-party model (PP-OCRv4 detector) that the profile's plain static int8 fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgeops.converters import quant_search


def _gate(value, limit=0.98, name="min_cosine[y]"):
    return {"gate": name, "value": value, "limit": limit, "unit": "", "passed": value >= limit}


def _tiny_model():
    """input -> Conv(first) -> Relu -> Conv -> Conv(head) -> Sigmoid -> output, unnamed nodes."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = [numpy_helper.from_array(np.ones((4, c, 3, 3), np.float32), f"w{i}") for i, c in enumerate((3, 4, 4))]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "w1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c", "w2"], ["d"], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["d"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], initializer=w)
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(values: dict[tuple[str, bool], float]):
    """search() over _tiny_model with the worst cosine given per (method, sensitive nodes float32)."""
    asked = []

    def quantize(spec, nodes, cache):
        asked.append((spec.method, tuple(nodes), Path(cache).name))
        return (spec.method, bool(nodes))

    def validate(artifact):
        return [_gate(values[artifact]), {"gate": "max_bundle_mb", "value": 1.0, "limit": 10, "unit": "MB", "passed": True}]

    return quant_search.search("float model", quantize, validate, "minmax", True, _tiny_model()), asked


def test_the_first_attempt_that_passes_ships_and_later_ones_are_not_tried():
    result, asked = _run({("minmax", False): 0.91, ("percentile", False): 0.985})
    assert result.passed and result.artifact == ("percentile", False)
    assert [a.method for a in result.attempts] == ["minmax", "percentile"] and len(asked) == 2
    first, second = result.attempts
    assert not first.passed and first.verdict == "rejected: min_cosine[y] 0.91 vs 0.98" and first.gates[0]["value"] == 0.91
    assert second.passed and second.verdict.startswith("kept") and "0.985" in second.line()


def test_sensitive_nodes_are_tried_with_the_better_method_reusing_its_calibration():
    result, asked = _run({("minmax", False): 0.5, ("percentile", False): 0.95, ("percentile", True): 0.99})
    assert result.passed and result.artifact == ("percentile", True)
    assert [(m, bool(n), c) for m, n, c in asked] == [("minmax", False, "minmax.json"), ("percentile", False, "percentile.json"), ("percentile", True, "percentile.json")]
    third = result.attempts[2]
    assert third.calibration == "percentile ranges reused from the cache"
    # the first Conv on the input, the head Conv and the Sigmoid after it; not the middle Conv
    assert third.nodes_float32 == ["Sigmoid_4", "Conv_3", "Conv_0"]


def test_nothing_passes_bounded_attempts_then_the_float_model():
    result, asked = _run({("minmax", False): 0.3, ("percentile", False): 0.2, ("minmax", True): 0.6, ("entropy", True): 0.5})
    assert not result.passed and result.artifact == "float model"
    assert quant_search.MAX_ATTEMPTS == 4 and len(asked) == 3  # no ranking: attempt 4 would repeat attempt 3's nodes
    assert [(a.method, bool(a.nodes_float32)) for a in result.attempts] == [("minmax", False), ("percentile", False), ("minmax", True)]
    assert all(a.verdict.startswith("rejected: min_cosine[y]") for a in result.attempts)
    assert all(set(a.doc()) >= {"attempt", "tried", "gates", "passed", "verdict", "nodes_float32"} for a in result.attempts)


def test_plan_starts_from_the_given_method_and_never_repeats_one():
    for first in ("minmax", "percentile", "entropy"):
        specs = quant_search.plan(first, True)
        assert specs[0].method == first and len(specs) <= quant_search.MAX_ATTEMPTS
        methods = [s.method for s in specs if s.method]
        assert len(set(methods)) == len(methods) == 2
        assert specs[-1].exclude_sensitive and not specs[-1].method  # the better of the two, chosen when it runs
        assert [s.worst_activations for s in specs if s.exclude_sensitive] == [False, True]  # heads alone first


def test_a_gate_that_could_not_be_measured_counts_as_the_worst():
    rows = [{"gate": "outputs_match", "value": "shape differs", "limit": "same shapes", "passed": False}, _gate(0.99)]
    assert quant_search.gate_margin(rows) < quant_search.gate_margin([_gate(0.1)])


def test_attempt_4_adds_the_ranked_nodes_of_the_better_attempt_to_the_heads_of_attempt_3():
    ranked_from = []

    def quantize(spec, nodes, cache):
        return (spec.method, tuple(nodes))

    def validate(artifact):
        return [_gate({"minmax": 0.5, "percentile": 0.9}[artifact[0]] if not artifact[1] else 0.97)]

    def rank(artifact):
        ranked_from.append(artifact)
        return ["Conv_2", "Conv_0"]

    result = quant_search.search("float", quantize, validate, "minmax", True, _tiny_model(), rank_nodes=rank)
    assert ranked_from == [("percentile", ())]  # ranked once, on the better of attempts 1-2
    assert result.attempts[2].nodes_float32 == ["Sigmoid_4", "Conv_3", "Conv_0"]  # heads and the first conv only
    assert result.attempts[3].nodes_float32 == ["Sigmoid_4", "Conv_3", "Conv_0", "Conv_2"]
    assert "heads and worst-quantized layers float32" in result.attempts[3].tried
    assert not result.passed and len(result.attempts) == 4


def test_when_the_heads_alone_pass_the_worst_layers_stay_int8_and_are_not_ranked():
    ranked = []

    def quantize(spec, nodes, cache):
        return (spec.method, tuple(nodes))

    def validate(artifact):
        return [_gate(0.99 if artifact[1] else 0.5)]

    result = quant_search.search("float", quantize, validate, "minmax", True, _tiny_model(), rank_nodes=lambda a: ranked.append(a) or ["Conv_2"])
    assert result.passed and len(result.attempts) == 3 and ranked == []
    assert result.artifact[1] == ("Sigmoid_4", "Conv_3", "Conv_0")


def _alternative_run(weighted_only_cosine: float):
    asked = []

    def quantize(spec, nodes, cache):
        asked.append((spec.method, tuple(nodes), Path(cache).name, spec.weighted_only))
        return (spec.method, bool(nodes), spec.weighted_only)

    def validate(artifact):
        return [_gate(weighted_only_cosine if artifact[2] else {"minmax": 0.5, "percentile": 0.99}[artifact[0]])]

    return quant_search.search("float", quantize, validate, "minmax", True, _tiny_model(), alternative=True), asked


def test_the_passing_attempt_is_built_again_weighted_only_with_its_calibration_and_nodes():
    result, asked = _alternative_run(0.985)
    assert result.passed and result.artifact == ("percentile", False, False)  # the search's own pick stays the artifact
    assert result.kept is result.attempts[1]
    assert result.alternative == ("percentile", False, True)
    assert asked[-1] == ("percentile", (), "percentile.json", True)  # the passing attempt's cache: ranges reused
    row = result.attempts[-1]
    assert row.attempt == 3 and row.passed and "Conv/MatMul/Gemm only" in row.tried
    assert row.verdict.startswith("alternative to attempt 2: passes every gate")


def test_a_weighted_only_layout_that_fails_a_gate_is_no_alternative():
    result, _ = _alternative_run(0.95)
    assert result.passed and result.alternative is None
    assert result.attempts[-1].verdict == "alternative to attempt 2 rejected: min_cosine[y] 0.95 vs 0.98"


def test_without_alternative_nothing_is_built_weighted_only():
    asked = []

    def quantize(spec, nodes, cache):
        asked.append(spec.weighted_only)
        return spec.method

    result = quant_search.search("float", quantize, lambda a: [_gate(0.99)], "minmax", True, _tiny_model())
    assert result.passed and result.alternative is None and asked == [False]


def test_weighted_only_quantization_leaves_the_ops_between_convs_float(tmp_path):
    """Real onnxruntime: with op_types, only the Convs compute in int8; the Sigmoid head takes and gives float."""
    import numpy as np
    import onnx

    from edgeops.converters.data import Dataset
    from edgeops.converters.passes import Artifact, PassContext, create_pass

    model = _tiny_model()
    from edgeops.profiles import load_profile

    calib = Dataset("calibration", {"x": np.random.default_rng(0).random((4, 3, 8, 8), np.float32)}, None, "")
    art = Artifact("onnx", data=model.SerializeToString())
    ctx = PassContext(profile=load_profile("x86_64-avx512-vnni"), calibration=calib)

    def int8_outputs(data):  # op types whose output is quantized (feeds a QuantizeLinear)
        q = onnx.load_model_from_string(data)
        q_in = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
        return {n.op_type for n in q.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and any(o in q_in for o in n.output)}

    full = create_pass("quantize-static")(art, ctx)
    only = create_pass("quantize-static", op_types=["Conv"])(art, ctx)
    assert "Sigmoid" in int8_outputs(full.data)
    assert "Sigmoid" not in int8_outputs(only.data)  # quantized only where a Conv reads it (the Relu's output)


def test_activation_error_nodes_names_float_model_nodes_from_qdq_loss_debug(tmp_path):
    """Real onnxruntime: quantize the tiny model, rank its layers; names are the float model's (unnamed nodes named as the pass names them)."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    model = _tiny_model()
    feeds = [{"x": np.random.default_rng(i).normal(size=(1, 3, 8, 8)).astype(np.float32)} for i in range(4)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    src.write_bytes(model.SerializeToString())
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ)
    names = quant_search.activation_error_nodes(src.read_bytes(), dst.read_bytes(), feeds, k=2)
    assert names and set(names) <= {"Conv_0", "Relu_1", "Conv_2", "Conv_3", "Sigmoid_4"}
    if "Relu_1" in names:  # a fused activation counts for its layer
        assert "Conv_0" in names


def test_auto_on_the_digits_cnn_ships_the_profiles_int8_model_after_one_attempt(cnn_files, tmp_path, capsys):
    """Where the profile's int8 passes, auto makes one attempt and ships exactly what --quantize static-int8 builds,
    unless the weighted-only layout of it passes too and measured faster here."""
    import json

    from edgeops.bundle import read_bundle

    from .conftest import run_cli

    def build(out, *extra):
        args = ["build", cnn_files["onnx"], "--profile", "x86_64-avx512-vnni", "--name", "digits-cnn", "--version", "1.0.0",
                "--calibration", cnn_files["calibration"], "--validation", cnn_files["validation"], "-o", str(out), *extra]
        code, stdout, stderr = run_cli(args, capsys)
        assert code == 0, stderr
        return stdout

    doc = json.loads(build(tmp_path / "auto.bundle", "--json"))
    attempt, *alternative = doc["report"]["quantization"]["attempts"]
    assert attempt["passed"] and attempt["method"] == "minmax" and attempt["verdict"] == "kept: passes every gate"
    layout = doc["report"]["quantization"].get("int8_layout")
    if alternative:  # a host with the profile's CPU features: the weighted-only layout was built and timed against it
        (alt,) = alternative
        assert "Conv/MatMul/Gemm only" in alt["tried"] and alt["verdict"].startswith("alternative to attempt 1")
        assert alt["passed"] == (layout is not None)
    build(tmp_path / "static.bundle", "--quantize", "static-int8")
    model = "model/model.onnx"
    same = read_bundle(tmp_path / "auto.bundle").files[model] == read_bundle(tmp_path / "static.bundle").files[model]
    assert same == (layout is None or layout["shipped"] == "full-graph"), layout


# --- a real corpus model ---------------------------------------------------------------------

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _ppocr_det(tmp_path, quantize):
    sys.path.insert(0, str(BENCH))
    try:
        import corpus
    finally:
        sys.path.remove(str(BENCH))
    from edgeops.converters.pipeline import BuildOptions, build

    entry = {e.name: e for e in corpus.ONNX_ENTRIES}["ppocrv4-det"]
    data = corpus.write_data(entry, tmp_path, calibration=8, validation=4)
    options = BuildOptions(model=str(corpus.fetch(entry)), profile="x86_64-avx512-vnni", name="det", version="1", output=str(tmp_path / "m.bundle"),
                           quantize=quantize, calibration=str(data["calibration"]), validation=str(data["validation"]), latency_runs=5)
    return build(options)


@pytest.mark.slow
def test_auto_tries_the_mitigations_where_the_profiles_static_int8_fails_and_ships_float_when_none_passes(tmp_path):
    """PP-OCRv4 det: MinMax static int8 misses the cosine gate; auto records that, tries the other
    attempts, and as none holds every validation page at 0.98 (the gate takes the worst feed; with
    the mean, as before 2026-12-05, a later attempt passed), the float32 model ships, saying why."""
    result = _ppocr_det(tmp_path, "auto")
    q = result.report["quantization"]
    assert result.gates_passed and q["scheme"] == "none", q
    first = q["attempts"][0]
    assert first["method"] == "minmax" and not first["passed"] and first["verdict"].startswith("rejected: min_cosine")
    assert len(q["attempts"]) >= 3 and not any(a["passed"] for a in q["attempts"]) and len(q["attempts"]) <= quant_search.MAX_ATTEMPTS
    assert "no static int8 attempt passed the parity gates" in q["reason"]
    assert any(line.startswith("auto attempt 1:") for line in result.report["passes"])


@pytest.mark.slow
def test_explicit_static_int8_still_fails_its_gates(tmp_path):
    from edgeops.errors import GateFailedError

    with pytest.raises(GateFailedError, match="min_cosine"):
        _ppocr_det(tmp_path, "static-int8")


def test_a_failed_size_gate_alone_stops_the_search():
    """Int8 attempts cannot shrink a bundle that is over the size budget: no further attempt, the float model (which then fails the same gate)."""
    asked = []

    def quantize(spec, nodes, cache):
        asked.append(spec.method)
        return spec.method

    def validate(artifact):
        return [_gate(0.999), {"gate": "max_bundle_mb", "value": 50.0, "limit": 10, "unit": "MB", "passed": False}]

    result = quant_search.search("float model", quantize, validate, "minmax", True, _tiny_model())
    assert not result.passed and asked == ["minmax"] and "not a parity gate" in result.attempts[0].verdict


def test_histogram_calibration_is_capped_by_the_activation_budget(monkeypatch):
    """Percentile/entropy calibrators hold every activation of every feed: the feed count fits the budget."""
    import onnx

    model = onnx.shape_inference.infer_shapes(_tiny_model())
    per_feed = quant_search.activation_bytes(model)
    assert per_feed == 4 * (4 * 8 * 8) * 5  # five [1, 4, 8, 8] float tensors
    assert quant_search.histogram_feeds(model, 256) == 256
    monkeypatch.setattr(quant_search, "HISTOGRAM_BUDGET_BYTES", 10 * per_feed)
    assert quant_search.histogram_feeds(model, 256) == 10
    assert quant_search.activation_bytes(_tiny_model()) == 4 * 3 * 8 * 8 * 5  # no inferred shapes: input bytes x nodes
