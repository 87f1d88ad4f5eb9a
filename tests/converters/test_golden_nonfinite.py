"""Golden vectors when a model gives NaN/Inf (regression: `_round_up` raised OverflowError).

* NaN/Inf in the original and the built model alike (the model's own behaviour, e.g. log(0)):
  the build succeeds, those feeds are skipped with a warning, golden cases are finite.
* NaN/Inf only in the built model: a NonFiniteOutputError naming the output and the feed.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgeops.bundle import read_bundle
from edgeops.converters.errors import NonFiniteOutputError
from edgeops.converters.passes import PassContext
from edgeops.converters.pipeline import _golden, _round_up
from edgeops.converters.runtime import OnnxRunner
from edgeops.converters.validate import compare_models
from edgeops.golden import GoldenVectors, compare_outputs
from edgeops.profiles import load_profile

from .conftest import run_cli


def _unary(op: str, name: str = "y") -> bytes:
    """x [N, 4] -> op(x) [N, 4], a 4-class 'classifier'."""
    graph = helper.make_graph([helper.make_node(op, ["x"], [name])], op.lower(), [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_round_up_refuses_non_finite_values():
    assert _round_up(0.01234) == 0.013
    for bad in (math.inf, math.nan, 0.0, -1.0):
        with pytest.raises(ValueError, match="positive finite"):
            _round_up(bad)


def test_model_that_is_non_finite_in_original_and_built_alike_builds(tmp_path, capsys):
    model = tmp_path / "log.onnx"
    model.write_bytes(_unary("Log", "logits"))
    x = np.random.default_rng(0).uniform(0.1, 2.0, (8, 4)).astype(np.float32)
    x[0, 1] = 0.0  # log(0) = -inf in every runtime: the model's own behaviour
    x[2, 3] = 0.0
    np.savez(tmp_path / "val.npz", x=x)
    out = tmp_path / "log.bundle"
    code, stdout, stderr = run_cli([
        "build", model, "--profile", "x86_64-avx512-vnni", "--name", "log", "--version", "1", "--quantize", "none",
        "--validation", tmp_path / "val.npz", "--json", "-o", out,
    ], capsys)
    assert code == 0, stderr
    report = json.loads(stdout)["report"]
    assert report["metrics"]["nonfinite_outputs"] == 0 and report["metrics"]["nonfinite_in_original"] == 2
    assert any("skipped validation feed(s) 0" in w and "; 2 " in w for w in report["warnings"])
    golden = GoldenVectors.from_json_bytes(read_bundle(out).files["golden.json"])
    assert [float(inputs["x"][0, 0]) for inputs, _ in golden.cases] == [float(x[i, 0]) for i in (1, 3, 4)]
    for inputs, expected in golden.cases:
        assert np.all(np.isfinite(expected["logits"]))
        actual = {"logits": OnnxRunner(model.read_bytes()).run(inputs)["logits"]}
        assert compare_outputs(actual, expected, golden.tolerances) == []


def test_all_feeds_non_finite_is_a_clear_error(tmp_path, capsys):
    model = tmp_path / "log.onnx"
    model.write_bytes(_unary("Log", "logits"))
    np.savez(tmp_path / "val.npz", x=np.zeros((3, 4), dtype=np.float32))
    code, _, stderr = run_cli([
        "build", model, "--profile", "x86_64-avx512-vnni", "--name", "log", "--version", "1", "--quantize", "none",
        "--validation", tmp_path / "val.npz", "-o", tmp_path / "b.bundle",
    ], capsys)
    assert code == 4
    assert "every validation feed of val.npz gives NaN/Inf" in stderr
    assert not (tmp_path / "b.bundle").exists()


def test_built_model_non_finite_where_the_original_is_finite_names_output_and_feed():
    ref = OnnxRunner(_unary("Abs"), label="original model")
    built = OnnxRunner(_unary("Sqrt"), label="built model")  # NaN for negative inputs: a broken build
    x = np.abs(np.random.default_rng(1).standard_normal((5, 4))).astype(np.float32)
    x[1, 2] = -0.5
    feeds = [{"x": x[i : i + 1]} for i in range(len(x))]
    metrics, outputs = compare_models(ref, built, feeds, None, classifier=True)
    assert metrics["nonfinite_outputs"] == 1
    assert all(math.isfinite(v) for v in metrics["outputs"]["y"].values() if v is not None)
    ctx = PassContext(profile=load_profile("x86_64-avx512-vnni"))
    with pytest.raises(NonFiniteOutputError) as err:
        _golden(feeds, ref, built, outputs, metrics, ctx, "val.npz")
    message = str(err.value)
    assert "output 'y'" in message and "validation feed 1" in message and "'x'" in message and "samples 1 of val.npz" in message
    assert "finite values" in message
