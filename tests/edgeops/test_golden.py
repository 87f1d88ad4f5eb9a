"""Golden vectors and tensor encoding: exact round trips, tolerant comparison, typed errors."""

from __future__ import annotations

import numpy as np
import pytest

from edgeops.errors import BundleError, DataError
from edgeops.golden import GoldenVectors, Tolerance, compare_outputs
from edgeops.tensors import decode_tensor, encode_tensor


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "uint8", "int64", "bool"])
def test_tensor_roundtrip(dtype):
    a = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    b = decode_tensor(encode_tensor(a))
    assert b.dtype == a.dtype and np.array_equal(a, b)


@pytest.mark.parametrize(
    "obj",
    [None, [], {"dtype": "complex64", "shape": [1], "data": ""}, {"dtype": "float32", "shape": [2], "data": "AAAA"}, {"dtype": "float32", "shape": [-1], "data": ""}, {"dtype": "float32", "shape": [1], "data": "!!"}],
)
def test_bad_tensors_raise_data_error(obj):
    with pytest.raises(DataError):
        decode_tensor(obj, "x")


def test_golden_roundtrip_and_compare():
    x = np.ones((1, 4), np.float32)
    y = np.array([[0.1, 0.9]], np.float32)
    g = GoldenVectors(cases=[({"x": x}, {"y": y})], tolerances={"y": Tolerance(atol=1e-3, rtol=0)})
    raw = g.to_json_bytes()
    g2 = GoldenVectors.from_json_bytes(raw)
    assert g2.to_json_bytes() == raw
    assert compare_outputs({"y": y + 1e-4}, {"y": y}, g.tolerances) == []
    assert compare_outputs({"y": y + 1e-2}, {"y": y}, g.tolerances)[0]["problem"] == "outside tolerance"
    assert "NaN" in compare_outputs({"y": y * np.nan}, {"y": y}, g.tolerances)[0]["problem"]
    assert compare_outputs({}, {"y": y}, g.tolerances)[0]["problem"] == "missing"
    with pytest.raises(BundleError):
        GoldenVectors.from_json_bytes(b'{"cases": 3}')
