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
    """A LiteRT interpreter (XNNPACK on the host) driven through the default signature
    (:class:`edgeops.litert.SignatureModel`, the same code the agent serves bundles with)."""

    def __init__(self, model_bytes: bytes, threads: int = 1, label: str = "model"):
        from edgeops.litert import SignatureModel

        self.model = SignatureModel(model_content=model_bytes, threads=threads, label=label)
        self.interpreter = self.model.interpreter
        self.inputs = self.model.inputs
        self.outputs = self.model.outputs

    @property
    def quantized_io(self) -> bool:
        return self.model.quantized_io

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.model.run(feed)


def make_runner(fmt: str, model_bytes: bytes, threads: int = 1, label: str = "model") -> Runner:
    """A runner for ``fmt`` ('onnx' or 'tflite')."""
    return TfliteRunner(model_bytes, threads, label) if fmt == "tflite" else OnnxRunner(model_bytes, threads, label)


def p50s_in_order(runners: dict, feed: dict[str, np.ndarray], runs: int, warmup: int = 3, max_seconds: float = 3.0) -> dict[str, float]:
    """p50 ms of each runner's single-feed latency, one runner after the other in the dict's order
    (each warmed up, then timed ``runs`` times back to back, as a device runs one model).

    Why not shorter turns (A A A A A, B B B B B, A ...), which would spread a burst of load from
    other jobs over all runners: measured, they slow OpenVINO at 2 threads on a 2-core host by
    whatever ran before it, a pause between turns notwithstanding (MobileNetV2 NNCF int8 beside
    onnxruntime's int8, 5 rounds, 2026-12-05: 2.66 ms in turns of five, 1.80-1.84 ms timed on
    its own or one after the other; onnxruntime 2.21 vs 2.11), so a build picked onnxruntime's
    int8 at 2 threads where OpenVINO's ran faster on the device. Callers rotate the order from
    round to round instead."""
    return {name: measure_latency(runner, feed, runs=runs, warmup=warmup, max_seconds=max_seconds)["p50_ms"] for name, runner in runners.items()}


def rotated(names: list[str], by: int) -> list[str]:
    """``names`` rotated left by ``by`` (round i of an interleaved timing starts with a different runner)."""
    if not names:
        return []
    k = by % len(names)
    return names[k:] + names[:k]


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
