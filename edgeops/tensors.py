"""Tensors as JSON: a dtype, a shape and the raw little-endian bytes in base64.

Used for golden vectors in bundles and for the agent's JSON inference API. The encoding is
exact (no float formatting) and deterministic, so bundles stay byte-identical.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from edgeops.errors import DataError

ALLOWED_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")


def encode_tensor(array: np.ndarray) -> dict[str, Any]:
    """Encode an array as {dtype, shape, data} with base64 little-endian bytes."""
    array = np.asarray(array)
    if array.dtype.name not in ALLOWED_DTYPES:
        raise DataError(f"tensor dtype {array.dtype.name} is not supported; use one of {', '.join(ALLOWED_DTYPES)}")
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    return {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "data": base64.b64encode(np.ascontiguousarray(little).tobytes()).decode("ascii"),
    }


def decode_tensor(obj: Any, what: str = "tensor") -> np.ndarray:
    """Decode {dtype, shape, data}; a malformed object raises DataError naming ``what``."""
    if not isinstance(obj, dict):
        raise DataError(f"{what}: expected an object with dtype, shape and data")
    dtype, shape, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
    if dtype not in ALLOWED_DTYPES:
        raise DataError(f"{what}: dtype {dtype!r} is not one of {', '.join(ALLOWED_DTYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise DataError(f"{what}: shape must be a list of non-negative integers, got {shape!r}")
    if not isinstance(data, str):
        raise DataError(f"{what}: data must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError as e:
        raise DataError(f"{what}: data is not valid base64") from e
    dt = np.dtype(dtype).newbyteorder("<")
    expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if len(raw) != expected:
        raise DataError(f"{what}: {len(raw)} bytes of data for shape {shape} and dtype {dtype} (expected {expected})")
    return np.frombuffer(raw, dtype=dt).astype(np.dtype(dtype)).reshape(shape)
