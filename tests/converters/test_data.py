"""Calibration / validation data loading: .npy, .npz, image folders, and their errors."""

from __future__ import annotations

import numpy as np
import pytest

from edgeops.bundle import TensorSpec
from edgeops.converters.data import ImageOptions, load_dataset
from edgeops.errors import DataError

SPEC = [TensorSpec(name="input", dtype="float32", shape=["N", 1, 8, 8])]


def test_npy_and_npz_with_labels(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 1, 8, 8), np.float64))
    ds = load_dataset(tmp_path / "x.npy", SPEC, "validation")
    assert ds.arrays["input"].dtype == np.float32 and ds.count == 5 and ds.labels is None
    assert any("converted float64" in n for n in ds.notes)
    np.savez(tmp_path / "v.npz", input=np.ones((3, 1, 8, 8), np.float32), labels=np.array([1, 2, 3]))
    ds = load_dataset(tmp_path / "v.npz", SPEC, "validation")
    assert ds.labels.tolist() == [1, 2, 3] and len(ds.batches(SPEC)) == 3


def test_bad_labels_and_nan(tmp_path):
    np.savez(tmp_path / "v.npz", input=np.ones((3, 1, 8, 8), np.float32), labels=np.array([1.5, 2, 3]))
    with pytest.raises(DataError, match="labels"):
        load_dataset(tmp_path / "v.npz", SPEC, "validation")
    x = np.ones((3, 1, 8, 8), np.float32)
    x[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "n.npy", x)
    with pytest.raises(DataError, match="NaN"):
        load_dataset(tmp_path / "n.npy", SPEC, "calibration")


def test_image_folder_with_class_subfolders(tmp_path):
    from PIL import Image

    for label, value in (("cat", 0), ("dog", 255)):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.fromarray(np.full((20, 20), value, np.uint8)).save(tmp_path / label / f"{i}.png")
    ds = load_dataset(tmp_path, SPEC, "validation", ImageOptions(mean=(0.5,), std=(0.5,)))
    assert ds.arrays["input"].shape == (4, 1, 8, 8)
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert np.allclose(ds.arrays["input"][0], -1.0) and np.allclose(ds.arrays["input"][3], 1.0)
    assert ds.sha256 and "mean [0.5]" in ds.notes[0]


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no image files"):
        load_dataset(tmp_path, SPEC, "calibration")
    with pytest.raises(ValueError):
        ImageOptions(layout="CHW")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing.npz", SPEC, "calibration")


# --- per-sample data, feed folders, generated inputs, open dims (issue 14) -----------------------

STATEFUL = [
    TensorSpec(name="input", dtype="float32", shape=["batch", "dim1"]),
    TensorSpec(name="state", dtype="float32", shape=[2, "batch", 128]),
    TensorSpec(name="sr", dtype="int64", shape=[]),
]


def test_leading_sample_axis_is_stripped_and_a_scalar_stays_a_0d_array(tmp_path):
    n = 5
    np.savez(tmp_path / "v.npz", input=np.zeros((n, 1, 512), np.float32), state=np.ones((n, 2, 1, 128), np.float32), sr=np.full(n, 16000))
    ds = load_dataset(tmp_path / "v.npz", STATEFUL, "validation")
    assert ds.layout == "per-sample" and ds.count == n
    feeds = ds.batches(STATEFUL)
    assert len(feeds) == n
    assert feeds[0]["input"].shape == (1, 512) and feeds[0]["state"].shape == (2, 1, 128)
    assert isinstance(feeds[0]["sr"], np.ndarray) and feeds[0]["sr"].shape == () and int(feeds[0]["sr"]) == 16000
    assert ds.known_dims(STATEFUL) == {"input": [1, 512], "state": [2, 1, 128], "sr": []}


def test_batch_layout_on_an_input_whose_first_axis_is_not_the_batch_asks_for_per_sample_data(tmp_path):
    specs = STATEFUL[:2]
    np.savez(tmp_path / "v.npz", input=np.zeros((4, 512), np.float32), state=np.zeros((4, 1, 128), np.float32))
    with pytest.raises(DataError, match=r"'state' \[2, batch, 128\] has 2 on axis 0, which is not the batch axis.*leading sample axis"):
        load_dataset(tmp_path / "v.npz", specs, "calibration")


def test_mixed_layouts_and_a_scalar_without_sample_axis_are_named(tmp_path):
    np.savez(tmp_path / "m.npz", input=np.zeros((4, 512), np.float32), state=np.zeros((4, 2, 1, 128), np.float32), sr=np.full(4, 16000))
    with pytest.raises(DataError, match=r"'state', 'sr' carry a leading sample axis.*'input' have samples on the model's axis 0"):
        load_dataset(tmp_path / "m.npz", STATEFUL, "validation")
    np.savez(tmp_path / "s.npz", input=np.zeros((4, 1, 512), np.float32), state=np.zeros((4, 2, 1, 128), np.float32), sr=np.int64(16000))
    with pytest.raises(DataError, match=r"'sr' is a scalar .* shape \[N\]"):
        load_dataset(tmp_path / "s.npz", STATEFUL, "validation")


def test_folder_of_npz_feeds_with_varying_width(tmp_path):
    specs = [TensorSpec(name="x", dtype="float32", shape=["N", 3, 48, "W"])]
    for i, w in enumerate((64, 96, 64)):
        np.savez(tmp_path / f"feed{i}.npz", x=np.zeros((1, 3, 48, w), np.float64), labels=np.array([i]))
    ds = load_dataset(tmp_path, specs, "validation")
    assert ds.layout == "per-sample" and ds.count == 3 and ds.sha256
    assert [f["x"].shape[3] for f in ds.batches(specs)] == [64, 96, 64]
    assert ds.arrays["x"][0].dtype == np.float32  # float64 converted, with a note
    assert ds.labels.tolist() == [0, 1, 2] and [l.tolist() for l in ds.label_batches(specs)] == [[0], [1], [2]]
    assert ds.known_dims(specs) == {"x": [1, 3, 48, None]}  # the width varies: it stays open
    np.savez(tmp_path / "feed9.npz", x=np.zeros((2, 1, 3, 48, 64), np.float32))
    with pytest.raises(DataError, match=r"feed9.npz: input 'x' has shape \[2, 1, 3, 48, 64\]; a feed file holds one feed"):
        load_dataset(tmp_path, specs, "validation")


def test_generated_inputs_have_the_input_shapes_exactly_with_batch_dims_at_1():
    from edgeops.converters.data import generated_dataset

    specs = [TensorSpec(name="input", dtype="float32", shape=["batch", 512]), STATEFUL[1]]
    ds = generated_dataset(specs, count=3)
    feeds = ds.batches(specs)
    assert len(feeds) == 3
    assert feeds[0]["state"].shape == (2, 1, 128)  # the 'batch' dim on axis 1, not axis 0
    assert feeds[0]["input"].shape == (1, 512)


def test_generated_inputs_refuse_what_cannot_be_guessed_naming_the_input():
    from edgeops.converters.data import generated_dataset
    from edgeops.converters.errors import DynamicShapeError

    with pytest.raises(DataError, match=r"'sr' \[\] int64.*--validation"):
        generated_dataset([TensorSpec(name="input", dtype="float32", shape=["batch", 512]), STATEFUL[2]], label="vad.onnx")
    with pytest.raises(DataError, match=r"'steps' \[1, 4\] int64"):
        generated_dataset([TensorSpec(name="steps", dtype="int64", shape=[1, 4])])
    text = [TensorSpec(name="input_ids", dtype="int64", shape=["batch", 8]), TensorSpec(name="attention_mask", dtype="int64", shape=["batch", 8])]
    feed = generated_dataset(text, count=2).batches(text)[0]
    assert feed["attention_mask"].tolist() == [[1] * 8] and feed["input_ids"].min() >= 1
    image = [TensorSpec(name="x", dtype="float32", shape=["N", 3, "H", "W"]), TensorSpec(name="scale", dtype="float32", shape=["N", 2])]
    with pytest.raises(DynamicShapeError) as e:
        generated_dataset(image, label="det.onnx")
    msg = str(e.value)
    assert "det.onnx" in msg and "'x' [N, 3, H, W] float32; 'scale' [N, 2] float32" in msg and "--input-shape x=1,3,<H>,<W>" in msg


def test_data_fixes_the_open_dims_it_agrees_on(tmp_path):
    from onnx import TensorProto, helper

    from edgeops.converters.graph import graph_inputs
    from edgeops.converters.shapes import fix_dims_from_data

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    specs = graph_inputs(model)
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 3, 32, 48), np.float32))
    np.savez(tmp_path / "v.npz", x=np.zeros((2, 3, 32, 64), np.float32))
    sets = [("calibration", load_dataset(tmp_path / "c.npz", specs, "calibration")), ("validation", load_dataset(tmp_path / "v.npz", specs, "validation"))]
    notes = fix_dims_from_data(model, specs, sets)
    assert graph_inputs(model)[0].shape == ["N", 3, 32, "W"]  # batch axis open, H agreed, W disagrees: open
    assert notes == ["shapes: input 'x' [N, 3, H, W] -> [N, 3, 32, W] from the calibration and validation data"]


def _stateful_model(path):
    """A small third-party-style recurrent step: x [batch, 4], state [2, batch, 4], scalar int64 sr."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 4], rng.standard_normal(16).astype(np.float32).tolist())
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"], name="project"),
        helper.make_node("ReduceSum", ["state", "axes0"], ["s"], keepdims=0, name="sum_state"),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT, name="cast_sr"),
        helper.make_node("Div", ["srf", "k16000"], ["scale"], name="scale"),
        helper.make_node("Mul", ["s", "scale"], ["ss"], name="mul_scale"),
        helper.make_node("Add", ["xw", "ss"], ["out"], name="out"),
        helper.make_node("Mul", ["state", "half"], ["stateN"], name="decay"),
    ]
    inits = [w, helper.make_tensor("axes0", TensorProto.INT64, [1], [0]), helper.make_tensor("k16000", TensorProto.FLOAT, [], [16000.0]),
             helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])]
    graph = helper.make_graph(
        nodes, "vad_step",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]), helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4]), helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "batch", 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="someone-else")
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_state_and_scalar_inputs_build_from_per_sample_data(tmp_path, capsys):
    import json

    from .conftest import run_cli

    model = _stateful_model(tmp_path / "step.onnx")
    rng = np.random.default_rng(1)
    n = 6
    np.savez(tmp_path / "val.npz", x=rng.standard_normal((n, 1, 4)).astype(np.float32), state=rng.standard_normal((n, 2, 1, 4)).astype(np.float32),
             sr=np.full(n, 16000, np.int64))
    args = ["build", model, "--profile", "x86_64-avx2", "--name", "step", "--version", "1", "--quantize", "none", "-o", tmp_path / "s.bundle"]
    code, out, err = run_cli(args + ["--validation", tmp_path / "val.npz", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert {i["name"]: i["shape"] for i in doc["manifest"]["inputs"]} == {"x": [1, 4], "state": [2, 1, 4], "sr": []}
    assert doc["report"]["metrics"]["feeds"] == n
    assert any(p.startswith("shapes: input 'state' [2, batch, 4] -> [2, 1, 4]") for p in doc["report"]["passes"])
    # Without data the scalar sample rate cannot be made up: the build asks for data naming it.
    code, _, err = run_cli(args, capsys)
    assert code == 4 and "'sr' [] int64" in err and "--validation" in err and "Traceback" not in err


def test_open_image_dims_are_fixed_from_calibration_or_named_with_the_flag(tmp_path, capsys):
    import json

    import onnx
    from onnx import TensorProto, helper

    from .conftest import run_cli

    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], (rng.standard_normal(216) * 0.2).astype(np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"), helper.make_node("Relu", ["c"], ["y"], name="relu")],
        "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, "H", "W"])],
        initializer=[w],
    )
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    args = ["build", path, "--profile", "x86_64-avx2", "--name", "det", "--version", "1", "-o", tmp_path / "d.bundle"]
    code, _, err = run_cli(args + ["--quantize", "none"], capsys)
    assert code == 4 and "'x' [N, 3, H, W] float32" in err and "--input-shape x=1,3,<H>,<W>" in err and "Traceback" not in err
    np.savez(tmp_path / "calib.npz", x=rng.random((4, 3, 24, 32), np.float32))
    code, out, err = run_cli(args + ["--quantize", "none", "--calibration", tmp_path / "calib.npz", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["manifest"]["inputs"][0]["shape"] == ["N", 3, 24, 32]
    assert "shapes: input 'x' [N, 3, H, W] -> [N, 3, 24, 32] from the calibration data" in doc["report"]["passes"]


def test_static_shapes_profile_takes_the_batch_from_the_data_too(cnn_files, tmp_path, capsys):
    import json

    from .conftest import run_cli
    from .test_bad_inputs import _custom_profile

    profile = _custom_profile(tmp_path, static_shapes=True)
    args = ["build", cnn_files["onnx"], "--profile", profile, "--name", "m", "--version", "1", "--quantize", "none", "-o", tmp_path / "o.bundle"]
    code, stdout, err = run_cli(args + ["--validation", cnn_files["validation"], "--json"], capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["manifest"]["inputs"][0]["shape"] == [1, 1, 16, 16]
    assert "shapes: input 'input' [batch, 1, 16, 16] -> [1, 1, 16, 16] from the validation data" in doc["report"]["passes"]


def test_static_shapes_refusal_lists_every_input_and_a_flag_per_open_input(tmp_path):
    from edgeops.converters.checks import check_static_shapes
    from edgeops.converters.errors import DynamicShapeError
    from edgeops.profiles import load_profile

    from .test_bad_inputs import _custom_profile

    profile = load_profile(str(_custom_profile(tmp_path, static_shapes=True)))
    specs = [TensorSpec(name="x", dtype="float32", shape=["N", 3, "H", "W"]), TensorSpec(name="scale", dtype="float32", shape=[1, 2]), STATEFUL[1]]
    with pytest.raises(DynamicShapeError) as e:
        check_static_shapes(specs, profile, "det.onnx")
    msg = str(e.value)
    assert "'x' [N, 3, H, W] float32; 'scale' [1, 2] float32; 'state' [2, batch, 128] float32" in msg
    assert "--input-shape x=1,3,<H>,<W> --input-shape state=2,1,128" in msg


def _add_model(path=None):
    """y = x + w with x [N, L] and w [4]: onnxruntime refuses the model once L is fixed to anything but 4 or 1."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"], name="add")], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], initializer=[helper.make_tensor("w", TensorProto.FLOAT, [4], [1, 2, 3, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if path:
        onnx.save(model, path)
    return model


def test_dims_onnxruntime_refuses_fixed_stay_open_and_a_bad_input_shape_flag_is_named(tmp_path, capsys):
    from edgeops.converters.graph import graph_inputs
    from edgeops.converters.shapes import fix_dims_from_data

    from .conftest import run_cli

    model = _add_model()
    specs = graph_inputs(model)
    np.savez(tmp_path / "c.npz", x=np.zeros((3, 5), np.float32))
    notes = fix_dims_from_data(model, specs, [("calibration", load_dataset(tmp_path / "c.npz", specs, "calibration"))])
    assert graph_inputs(model)[0].shape == ["N", "L"]
    assert len(notes) == 1 and "keeps its open dims [N, L] (the data gives [N, 5], but onnxruntime refuses the model with them fixed" in notes[0]
    _add_model(tmp_path / "add.onnx")
    code, _, err = run_cli(["build", tmp_path / "add.onnx", "--profile", "x86_64-avx2", "--name", "a", "--version", "1", "--quantize", "none",
                            "--input-shape", "x=1,5", "-o", tmp_path / "a.bundle"], capsys)
    assert code == 3 and "--input-shape x=1,5: onnxruntime cannot load the model with these shapes" in err and "Traceback" not in err
