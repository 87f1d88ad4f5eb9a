"""Running a model on the build host in the real runtime: onnxruntime or LiteRT (ai-edge-litert).

Both runners take and return ``{name: array}``. The LiteRT runner uses the model's default
signature, so input/output names are the signature names; it quantizes float inputs and
dequantizes int8 outputs of fully-integer models with the tensors' own scale / zero point so
that metrics compare like with like.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from edgeops.bundle import TensorSpec
from edgeops.errors import ModelLoadError


class Runner(Protocol):
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OnnxRunner:
    """An onnxruntime session on the CPU execution provider with a fixed thread count."""

    def __init__(self, model_bytes: bytes, threads: int = 1, label: str = "model", optimize: bool = True):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if not optimize:
            # Unfused QDQ: DequantizeLinear -> float op -> QuantizeLinear, i.e. the exact integer
            # semantics of the quantized model without the host's int8 kernels (see pipeline).
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self.session = ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelLoadError(f"{label}: onnxruntime cannot load the model: {e}") from e
        self.inputs = [_ort_spec(i) for i in self.session.get_inputs()]
        self.outputs = [_ort_spec(o) for o in self.session.get_outputs()]
        self._out_names = [o.name for o in self.outputs]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self._out_names, feed)
        return {n: np.asarray(v) for n, v in zip(self._out_names, values)}


_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64", "tensor(int64)": "int64",
    "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool", "tensor(int16)": "int16",
}


def _ort_spec(arg) -> TensorSpec:
    shape = [d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else f"dim{i}") for i, d in enumerate(arg.shape or [])]
    return TensorSpec(name=arg.name, dtype=_ORT_TYPES.get(arg.type, arg.type), shape=shape)


class TfliteRunner:
    """A LiteRT interpreter (XNNPACK on the host) driven through the default signature."""

    def __init__(self, model_bytes: bytes, threads: int = 1, label: str = "model"):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise ModelLoadError(f"{label}: ai-edge-litert is not installed; pip install 'edgeops[tflite]'") from e
        try:
            self.interpreter = Interpreter(model_content=model_bytes, num_threads=threads)
            signatures = self.interpreter.get_signature_list()
            self.key = sorted(signatures)[0] if signatures else None
            if self.key is None:
                raise ModelLoadError(f"{label}: the .tflite model has no signature; convert it with litert-torch (which writes 'serving_default')")
            self.runner = self.interpreter.get_signature_runner(self.key)
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(f"{label}: LiteRT cannot load the model: {e}") from e
        in_details = self.runner.get_input_details()
        out_details = self.runner.get_output_details()
        self._in = {n: d for n, d in sorted(in_details.items())}
        self._out = {n: d for n, d in sorted(out_details.items())}
        # The I/O schema shows what the *caller* passes and gets: float for quantized I/O.
        self.inputs = [TensorSpec(name=n, dtype=_float_if_quantized(d), shape=[int(x) for x in d["shape"]]) for n, d in self._in.items()]
        self.outputs = [TensorSpec(name=n, dtype=_float_if_quantized(d), shape=[int(x) for x in d["shape"]]) for n, d in self._out.items()]

    @property
    def quantized_io(self) -> bool:
        return any(_quant(d) for d in list(self._in.values()) + list(self._out.values()))

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = {}
        for name, d in self._in.items():
            x = np.asarray(feed[name])
            q = _quant(d)
            if q:
                scale, zero = q
                info = np.iinfo(d["dtype"])
                x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(d["dtype"])
            args[name] = x.astype(d["dtype"], copy=False)
        result = self.runner(**args)
        out = {}
        for name, d in self._out.items():
            y = np.asarray(result[name])
            q = _quant(d)
            out[name] = ((y.astype(np.float32) - q[1]) * q[0]).astype(np.float32) if q else y.copy()
        return out


def _quant(detail) -> tuple[float, int] | None:
    if np.dtype(detail["dtype"]).kind not in "iu":
        return None
    scale, zero = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero)) if scale else None


def _float_if_quantized(detail) -> str:
    return "float32" if _quant(detail) else np.dtype(detail["dtype"]).name


def make_runner(fmt: str, model_bytes: bytes, threads: int = 1, label: str = "model") -> Runner:
    """A runner for ``fmt`` ('onnx' or 'tflite')."""
    return TfliteRunner(model_bytes, threads, label) if fmt == "tflite" else OnnxRunner(model_bytes, threads, label)


def measure_latency(runner: Runner, feed: dict[str, np.ndarray], runs: int = 200, warmup: int = 20, max_seconds: float = 3.0) -> dict[str, float]:
    """p50 / p95 / mean of single-feed latency in milliseconds (stops early after ``max_seconds``)."""
    for _ in range(warmup):
        runner.run(feed)
    times = []
    deadline = time.perf_counter() + max_seconds
    for _ in range(runs):
        t0 = time.perf_counter()
        runner.run(feed)
        times.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() > deadline and len(times) >= 20:
            break
    arr = np.asarray(times)
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)), "mean_ms": float(arr.mean()), "runs": len(times)}
