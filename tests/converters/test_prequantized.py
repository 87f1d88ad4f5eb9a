"""A model that is already quantized is detected and not quantized again under auto; an explicit
--quantize still forces a scheme."""

from __future__ import annotations

import json
from collections import Counter

import onnx

from edgeops.bundle import read_bundle
from edgeops.converters.graph import quantized_ops
from tests.converters.conftest import run_cli
from tests.support.onnx_models import qdq_model, write_data


def _build(src, tmp_path, capsys, *extra):
    data = write_data(tmp_path)
    out = tmp_path / f"q{len(extra)}.bundle"
    code, stdout, stderr = run_cli([
        "build", src, "--profile", "x86_64-avx512-vnni", "--name", "q", "--version", "1",
        "--calibration", data["calibration"], "--validation", data["validation"], "--json", "-o", out, *extra,
    ], capsys)
    assert code == 0, stderr
    return json.loads(stdout)["report"], onnx.load_model_from_string(read_bundle(out).files["model/model.onnx"])


def test_qdq_model_is_not_requantized_under_auto(tmp_path, capsys):
    model = qdq_model()
    src = tmp_path / "int8.onnx"
    onnx.save(model, str(src))
    report, built = _build(src, tmp_path, capsys)
    q = report["quantization"]
    assert q["scheme"] == "none" and "already quantized" in q["reason"] and "QDQ" in q["reason"]
    assert "already quantized: QDQ" in q["model_analysis"]
    assert not any(p.startswith("quantize-") for p in report["passes"])
    original = quantized_ops(model)
    assert quantized_ops(built)["QuantizeLinear"] == original["QuantizeLinear"]  # no second layer of Q/DQ
    # --quantize still forces a scheme on it.
    report, _ = _build(src, tmp_path, capsys, "--quantize", "dynamic-int8")
    assert report["quantization"]["scheme"] == "dynamic-int8" and "given" in report["quantization"]["reason"]


def test_quantized_ops_names_each_form():
    ops = quantized_ops(qdq_model())
    assert set(ops) == {"QuantizeLinear", "DequantizeLinear"} and Counter(ops).total() > 10
