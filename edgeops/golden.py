"""Golden vectors: inputs with the built model's outputs and tolerances, for the device self-test.

Stored in a bundle as ``golden.json``. A device runs every case through its runtime and
compares each output with ``numpy.allclose(actual, expected, rtol, atol)`` per output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from edgeops.errors import BundleError, DataError
from edgeops.tensors import decode_tensor, encode_tensor


@dataclass(frozen=True)
class Tolerance:
    """Allowed difference between the device's output and the expected one."""

    atol: float
    rtol: float


@dataclass
class GoldenVectors:
    """A few input cases with expected outputs and one tolerance per output name."""

    cases: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]
    tolerances: dict[str, Tolerance] = field(default_factory=dict)

    def to_json_bytes(self) -> bytes:
        """Deterministic JSON encoding (sorted keys, no whitespace variance)."""
        doc = {
            "format": 1,
            "tolerances": {k: {"atol": float(t.atol), "rtol": float(t.rtol)} for k, t in sorted(self.tolerances.items())},
            "cases": [
                {
                    "inputs": {k: encode_tensor(v) for k, v in sorted(inputs.items())},
                    "outputs": {k: encode_tensor(v) for k, v in sorted(outputs.items())},
                }
                for inputs, outputs in self.cases
            ],
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json_bytes(cls, raw: bytes) -> "GoldenVectors":
        """Parse golden.json; anything malformed is a BundleError."""
        try:
            doc = json.loads(raw)
            tolerances = {k: Tolerance(float(v["atol"]), float(v["rtol"])) for k, v in doc["tolerances"].items()}
            cases = []
            for i, case in enumerate(doc["cases"]):
                inputs = {k: decode_tensor(v, f"golden case {i} input {k}") for k, v in case["inputs"].items()}
                outputs = {k: decode_tensor(v, f"golden case {i} output {k}") for k, v in case["outputs"].items()}
                cases.append((inputs, outputs))
        except (ValueError, KeyError, TypeError, AttributeError, DataError) as e:
            raise BundleError(f"golden.json is malformed: {e}") from e
        return cls(cases=cases, tolerances=tolerances)


def compare_outputs(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], tolerances: dict[str, Tolerance]) -> list[dict]:
    """Compare one case's outputs; return a list of mismatches (empty when all are within tolerance)."""
    problems = []
    for name, want in expected.items():
        tol = tolerances.get(name, Tolerance(atol=1e-4, rtol=1e-3))
        got = actual.get(name)
        if got is None:
            problems.append({"output": name, "problem": "missing"})
            continue
        got = np.asarray(got)
        if got.shape != want.shape:
            problems.append({"output": name, "problem": f"shape {list(got.shape)} != {list(want.shape)}"})
            continue
        if not np.all(np.isfinite(got.astype(np.float64))):
            problems.append({"output": name, "problem": "non-finite values (NaN/Inf)"})
            continue
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        if not np.allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol.rtol, atol=tol.atol):
            problems.append({"output": name, "problem": "outside tolerance", "max_abs_error": float(diff.max()), "atol": tol.atol, "rtol": tol.rtol})
    return problems
