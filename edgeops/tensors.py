"""Tensors as JSON: a dtype, a shape and the raw little-endian bytes in base64.

Used for golden vectors in bundles and for the agent's JSON inference API. The encoding is
exact (no float formatting) and deterministic, so bundles stay byte-identical.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

from edgeops.errors import DataError

ALLOWED_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
MAX_RANK = 32  # numpy allows 64; no model input comes near either
MAX_DIM = 2**31 - 1  # a dimension beyond this is never a real tensor; it only overflows size math


def tensor_nbytes(dtype: str, shape: list, what: str = "tensor") -> int:
    """Bytes of a ``dtype`` tensor of ``shape``, computed without overflow; DataError naming
    ``what`` when the shape is not a list of at most MAX_RANK integers in 0..MAX_DIM."""
    if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape):
        raise DataError(f"{what}: shape must be a list of at most {MAX_RANK} integers in 0..{MAX_DIM}, got {shape!r}"[:300])
    return math.prod(shape) * np.dtype(dtype).itemsize


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
    expected = tensor_nbytes(dtype, shape, what)
    if not isinstance(data, str):
        raise DataError(f"{what}: data must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError as e:
        raise DataError(f"{what}: data is not valid base64") from e
    if len(raw) != expected:
        raise DataError(f"{what}: {len(raw)} bytes of data for shape {shape} and dtype {dtype} (expected {expected})")
    return from_little_endian(raw, dtype, shape, what)


def from_little_endian(raw: bytes, dtype: str, shape: list[int], what: str = "tensor") -> np.ndarray:
    """An array of ``dtype`` and ``shape`` from raw little-endian bytes whose length was checked
    (``tensor_nbytes``); DataError when numpy still cannot hold the shape (e.g. 0 x 2^31 x 2^31)."""
    try:
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(np.dtype(dtype)).reshape(shape)
    except ValueError as e:
        raise DataError(f"{what}: shape {shape} cannot be held: {e}") from e
