"""Inference inputs checked against the served model's manifest before the runtime sees them.

What a caller sends wrong — an unknown or missing input name, another dtype, another rank, a
fixed dimension of another size, NaN or Inf — is the caller's fault: it is refused here with
:class:`BadInputError` (the API answers 400) and never reaches the runtime, so it is never
counted as a model error in telemetry or probation. Whatever fails in the runtime after these
checks is the model's fault (``InferenceError``).

Non-finite inputs are refused (choice): a NaN or Inf the model returns for a NaN or Inf it was
given says nothing about the model, yet it is indistinguishable from a NaN the model made, and
one such request during probation would fail ``nan_outputs`` and roll a good version back.
Refusing them keeps every NaN in telemetry and probation attributable to the model. Callers
with missing values impute them before calling.
"""

from __future__ import annotations

import numpy as np

from edgeops.bundle import TensorSpec
from edgeops.errors import AgentError
from edgeops.tensors import ALLOWED_DTYPES


class BadInputError(AgentError):
    """An inference request whose inputs do not match the model's."""


def check_inputs(specs: list[TensorSpec], inputs: dict[str, np.ndarray], model: str, fixed_dims: bool = True) -> None:
    """Raise BadInputError unless ``inputs`` has exactly the inputs of ``specs``, each with its
    dtype and rank, its fixed dimensions when ``fixed_dims`` (onnxruntime enforces them; LiteRT
    signatures resize), and finite values only."""
    expected = [s.name for s in specs]
    missing = [n for n in expected if n not in inputs]
    unknown = [n for n in inputs if n not in expected]
    if missing or unknown:
        parts = ([f"missing input(s) {', '.join(missing)}"] if missing else []) + ([f"unknown input(s) {', '.join(map(repr, unknown))[:200]}"] if unknown else [])
        raise BadInputError(f"{'; '.join(parts)}; model {model} takes {', '.join(expected)}")
    for spec in specs:
        a = inputs[spec.name]
        what = f"input {spec.name!r} of model {model}"
        if spec.dtype in ALLOWED_DTYPES and a.dtype.name != spec.dtype:
            raise BadInputError(f"{what} is {spec.dtype}, got {a.dtype.name}")
        if spec.shape and a.ndim != len(spec.shape):
            raise BadInputError(f"{what} has shape {_shape(spec.shape)} (rank {len(spec.shape)}), got {list(a.shape)}")
        if fixed_dims:
            for i, (want, got) in enumerate(zip(spec.shape, a.shape)):
                if isinstance(want, int) and want > 0 and want != got:
                    raise BadInputError(f"{what} has shape {_shape(spec.shape)}: dimension {i} must be {want}, got {list(a.shape)}")
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            raise BadInputError(f"{what} holds {bad} NaN/Inf value(s); the agent runs models on finite inputs only (impute missing values first)")


def _shape(shape: list) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
