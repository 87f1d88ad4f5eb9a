"""A LiteRT (TFLite) model driven through its signature, shared by the packager and the agent.

Bundles carry ``.tflite`` models written by litert-torch, whose ``serving_default`` signature
names inputs after the ``forward()`` arguments and outputs ``output_0``, ... The manifest and
the golden vectors use those signature names, so whatever runs a bundle must go through the
signature too (the interpreter's raw tensor names are ``serving_default_x`` and the like).
Fully-integer models take and give int8/uint8 tensors; callers pass and get float32, which is
quantized and dequantized here with each tensor's own scale and zero point, as the packager
validated them.

The interpreter comes from ai-edge-litert, or from tflite_runtime where that is what the
device has; it is imported on first use, so importing this module imports neither.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeops.bundle import TensorSpec
from edgeops.errors import ModelLoadError


def interpreter_class():
    """LiteRT's Interpreter class (ai-edge-litert, else tflite_runtime); ModelLoadError when neither is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # older devices ship this one

        return Interpreter
    except ImportError as e:
        raise ModelLoadError("no LiteRT runtime: pip install ai-edge-litert (or tflite-runtime)") from e


class SignatureModel:
    """One ``.tflite`` model run through its (first, by name) signature.

    ``inputs`` / ``outputs`` describe what the caller passes and gets: float32 for quantized
    tensors. Not thread-safe (LiteRT interpreters are not): callers serialize ``run``.
    """

    def __init__(self, *, model_path: str | Path | None = None, model_content: bytes | None = None, threads: int = 1, label: str = "model"):
        Interpreter = interpreter_class()
        try:
            if model_content is not None:
                self.interpreter = Interpreter(model_content=model_content, num_threads=threads)
            else:
                self.interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
            signatures = self.interpreter.get_signature_list()
        except Exception as e:
            raise ModelLoadError(f"{label}: LiteRT cannot load the model: {e}") from e
        if not signatures:
            raise ModelLoadError(f"{label}: the .tflite model has no signature; convert it with litert-torch (which writes 'serving_default')")
        self.signature = sorted(signatures)[0]
        try:
            self.runner = self.interpreter.get_signature_runner(self.signature)
            self._in = dict(sorted(self.runner.get_input_details().items()))
            self._out = dict(sorted(self.runner.get_output_details().items()))
        except Exception as e:
            raise ModelLoadError(f"{label}: LiteRT cannot prepare signature {self.signature!r}: {e}") from e
        self.inputs = [TensorSpec(name=n, dtype=_float_if_quantized(d), shape=[int(x) for x in d["shape"]]) for n, d in self._in.items()]
        self.outputs = [TensorSpec(name=n, dtype=_float_if_quantized(d), shape=[int(x) for x in d["shape"]]) for n, d in self._out.items()]

    @property
    def quantized_io(self) -> bool:
        """Whether any input or output is an integer tensor with a quantization scale."""
        return any(_quant(d) for d in list(self._in.values()) + list(self._out.values()))

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One inference; KeyError names a missing input (the signature runner resizes inputs
        whose shape differs from the current one)."""
        args = {}
        for name, d in self._in.items():
            x = np.asarray(feed[name])
            q = _quant(d)
            if q:
                scale, zero = q
                info = np.iinfo(d["dtype"])
                x = np.clip(np.round(x / scale + zero), info.min, info.max)
            args[name] = x.astype(d["dtype"], copy=False)
        result = self.runner(**args)
        out = {}
        for name, d in self._out.items():
            y = np.asarray(result[name])
            q = _quant(d)
            # copy: the runner's output buffers are reused by the next invocation
            out[name] = ((y.astype(np.float32) - q[1]) * q[0]).astype(np.float32) if q else y.copy()
        return out


def _quant(detail) -> tuple[float, int] | None:
    if np.dtype(detail["dtype"]).kind not in "iu":
        return None
    scale, zero = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero)) if scale else None


def _float_if_quantized(detail) -> str:
    return "float32" if _quant(detail) else np.dtype(detail["dtype"]).name
