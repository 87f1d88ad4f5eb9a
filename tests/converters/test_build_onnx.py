"""`edgeops build` on onnxruntime profiles with a real trained model, end to end through the CLI."""

from __future__ import annotations

import json


from edgeops.bundle import read_bundle
from edgeops.golden import GoldenVectors, compare_outputs
from edgeops.profiles import load_profile

from .conftest import run_cli


def _build(cnn_files, out, *extra):
    return [
        "build", cnn_files["onnx"], "--profile", "x86_64-avx512-vnni", "--name", "digits-cnn", "--version", "1.0.0",
        "--calibration", cnn_files["calibration"], "--validation", cnn_files["validation"], "-o", out, *extra,
    ]


def test_static_int8_cnn_meets_profile_gates(cnn_files, tmp_path, capsys):
    out = tmp_path / "cnn.bundle"
    code, stdout, stderr = run_cli(_build(cnn_files, out, "--quantize", "static-int8", "--json"), capsys)
    assert code == 0, stderr
    doc = json.loads(stdout)
    report = doc["report"]
    budgets = load_profile("x86_64-avx512-vnni").budgets
    m = report["metrics"]
    assert report["quantization"]["scheme"] == "static-int8"
    assert report["accuracy_measured"] is True
    assert m["accuracy_drop_points"] <= budgets.max_accuracy_drop
    assert m["top1_agreement"] >= budgets.min_agreement
    assert m["outputs"]["logits"]["cosine_mean"] >= budgets.min_cosine
    assert out.stat().st_size / 1e6 <= budgets.max_bundle_mb
    assert report["size"]["ratio"] < 0.6  # int8 weights: well under the fp32 size
    contents = read_bundle(out)
    manifest = contents.manifest
    assert manifest.task == "classifier" and manifest.quantization == "static-int8"
    assert manifest.budgets.latency_p95_ms == budgets.latency_p95_ms
    assert manifest.provenance.calibration_sha256 and manifest.provenance.validation_sha256
    assert "onnxruntime" in manifest.provenance.toolchain
    # The QDQ model really is quantized.
    import onnx

    ops = {n.op_type for n in onnx.load_model_from_string(contents.files["model/model.onnx"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_auto_picks_static_for_cnn_and_golden_vectors_self_test(cnn_files, tmp_path, capsys):
    out = tmp_path / "auto.bundle"
    code, stdout, stderr = run_cli(_build(cnn_files, out), capsys)
    assert code == 0, stderr
    assert "static-int8" in stdout and "conv" in stdout  # the choice and why, in the human output
    contents = read_bundle(out)
    golden = GoldenVectors.from_json_bytes(contents.files["golden.json"])
    assert len(golden.cases) == 3
    # The golden vectors reproduce with the unfused QDQ graph (exact integer semantics) on any host.
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(contents.files["model/model.onnx"], opts, providers=["CPUExecutionProvider"])
    for inputs, expected in golden.cases:
        actual = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))
        assert compare_outputs(actual, expected, golden.tolerances) == []


def test_same_inputs_give_byte_identical_bundles(cnn_files, tmp_path, capsys):
    a, b = tmp_path / "a.bundle", tmp_path / "b.bundle"
    assert run_cli(_build(cnn_files, a, "--quantize", "static-int8"), capsys)[0] == 0
    assert run_cli(_build(cnn_files, b, "--quantize", "static-int8"), capsys)[0] == 0
    assert a.read_bytes() == b.read_bytes()


def test_inspect_prints_the_built_bundle(cnn_files, tmp_path, capsys):
    out = tmp_path / "i.bundle"
    assert run_cli(_build(cnn_files, out, "--quantize", "dynamic-int8"), capsys)[0] == 0
    code, stdout, _ = run_cli(["inspect", out, "--json"], capsys)
    assert code == 0
    doc = json.loads(stdout)
    assert doc["manifest"]["name"] == "digits-cnn" and doc["manifest"]["quantization"] == "dynamic-int8"
    assert doc["report"]["status"] == "passed" and doc["golden_cases"] == 3
    code, stdout, _ = run_cli(["inspect", out], capsys)
    assert code == 0 and "model/model.onnx" in stdout


def test_linear_heavy_model_picks_dynamic_int8_under_auto(transformer_onnx, tmp_path, capsys):
    out = tmp_path / "tr.bundle"
    code, stdout, stderr = run_cli([
        "build", transformer_onnx["onnx"], "--profile", "x86_64-avx512-vnni", "--name", "tr", "--version", "1",
        "--validation", transformer_onnx["validation"], "--json", "-o", out,
    ], capsys)
    assert code == 0, stderr
    report = json.loads(stdout)["report"]
    q = report["quantization"]
    assert q["scheme"] == "dynamic-int8"
    assert "MatMul" in q["reason"] and "transformer" in q["reason"]
    # The attention block is fused before quantization and runs as one int8 QAttention kernel.
    import onnx

    ops = {n.op_type for n in onnx.load_model_from_string(read_bundle(out).files["model/model.onnx"]).graph.node}
    assert "QAttention" in ops and "Softmax" not in ops
    assert any("Attention -> QAttention" in p for p in report["passes"])
    assert report["metrics"]["top1_agreement"] >= load_profile("x86_64-avx512-vnni").budgets.min_agreement


def test_fp16_on_jetson_profile(cnn_files, tmp_path, capsys):
    out = tmp_path / "j.bundle"
    code, stdout, stderr = run_cli([
        "build", cnn_files["onnx"], "--profile", "jetson-orin-nano", "--name", "c", "--version", "1",
        "--validation", cnn_files["validation"], "--json", "-o", out,
    ], capsys)
    assert code == 0, stderr
    report = json.loads(stdout)["report"]
    assert report["quantization"]["scheme"] == "fp16"
    assert report["metrics"]["top1_agreement"] >= 0.99
    import onnx

    model = onnx.load_model_from_string(read_bundle(out).files["model/model.onnx"])
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O kept float32
    # The device's GPU computes fp16 in ways this CPU host cannot: the golden tolerance covers
    # twice the error accepted against the original, not the CPU-to-CPU quarter.
    from edgeops.golden import GoldenVectors

    golden = GoldenVectors.from_json_bytes(read_bundle(out).files["golden.json"])
    for name, tol in golden.tolerances.items():
        assert tol.atol >= 2.0 * report["metrics"]["outputs"][name]["max_abs_error"]
    assert any("CUDAExecutionProvider" in w or "TensorrtExecutionProvider" in w for w in report["warnings"])


def test_no_validation_data_warns_that_accuracy_is_not_measured(cnn_files, tmp_path, capsys):
    out = tmp_path / "n.bundle"
    code, stdout, stderr = run_cli([
        "build", cnn_files["onnx"], "--profile", "x86_64-avx2", "--name", "c", "--version", "1", "--quantize", "none", "--json", "-o", out,
    ], capsys)
    assert code == 0, stderr
    report = json.loads(stdout)["report"]
    assert report["accuracy_measured"] is False
    assert any("accuracy is NOT measured" in w for w in report["warnings"])
    assert report["metrics"]["top1_agreement"] == 1.0


def test_static_int8_on_avx2_profile_uses_reduce_range(cnn_files, tmp_path, capsys):
    out = tmp_path / "avx2.bundle"
    code, stdout, stderr = run_cli([
        "build", cnn_files["onnx"], "--profile", "x86_64-avx2", "--name", "c", "--version", "1", "--calibration", cnn_files["calibration"],
        "--validation", cnn_files["validation"], "--json", "-o", out,
    ], capsys)
    assert code == 0, stderr
    report = json.loads(stdout)["report"]
    assert any("reduce_range on" in p for p in report["passes"])
    assert report["metrics"]["top1_agreement"] >= 0.98


def test_dynamic_int8_build_with_fused_attention_is_byte_identical(transformer_onnx, tmp_path, capsys):
    args = ["build", transformer_onnx["onnx"], "--profile", "x86_64-avx512-vnni", "--name", "tr", "--version", "1", "--validation", transformer_onnx["validation"]]
    a, b = tmp_path / "a.bundle", tmp_path / "b.bundle"
    assert run_cli([*args, "-o", a], capsys)[0] == 0
    assert run_cli([*args, "-o", b], capsys)[0] == 0
    assert a.read_bytes() == b.read_bytes()


def test_auto_reports_its_int8_versus_float_speed_check(cnn_files, tmp_path, capsys):
    """auto's speed check is in the report without figures (builds stay reproducible), its figures
    in the build output, and what shipped is what the rule says for those figures."""
    from edgeops.converters import speed_check

    out = tmp_path / "auto.bundle"
    code, stdout, stderr = run_cli([*_build(cnn_files, out), "--json"], capsys)
    assert code == 0, stderr
    doc = json.loads(stdout)
    check = doc["report"]["quantization"]["speed_check"]
    assert check["shipped"] == doc["report"]["quantization"]["scheme"]
    assert "ms" not in json.dumps(check)
    candidates = doc["host_latency"].get("candidates")
    if check["measured"]:
        figures = candidates["speed_check"]
        assert speed_check.decide(figures, threads=1).keep_int8 == (check["shipped"] == "static-int8")
    layout = doc["report"]["quantization"].get("int8_layout")
    if layout is not None:  # the weighted-only alternative passed: the same rule for the layout decision
        assert "ms" not in json.dumps(layout)
        if layout["measured"]:
            assert speed_check.decide_layout(candidates["int8_layout"], threads=1).use_alternative == (layout["shipped"] == "weighted-only")
        else:  # this digits CNN runs in microseconds: too fast to time two layouts apart, the full graph stays
            assert layout["shipped"] == "full-graph"
