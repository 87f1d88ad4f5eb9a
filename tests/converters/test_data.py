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
    import onnx
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
