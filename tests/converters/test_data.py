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
