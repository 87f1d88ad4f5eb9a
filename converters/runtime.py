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


TURN = 5  # inferences per turn in :func:`p50s_in_turns`; the first of each is untimed
MIN_TIMED_RUNS = 12  # p50s_in_turns' early stop waits for this many timed inferences per runner


def p50s_in_turns(runners: dict, feed: dict[str, np.ndarray], runs: int, warmup: int = 3, max_seconds: float | None = None) -> dict[str, float]:
    """p50 ms of each runner's single-feed latency, the runners timed in turns of :data:`TURN`
    inferences (A A A A A, B B B B B, A ..., until each has ``runs`` timed ones).

    Timing one runner's ``runs`` inferences and then the next's lets a burst of load from other
    jobs (a noisy neighbour on a shared host: seen at 2 threads on a 2-vCPU VM, where one path's
    p50 moved 1.5x between rounds) land on one runner only; in short turns it lands on all alike.
    Each turn's first inference is not timed: it brings the model's weights back into cache after
    the other runners ran, and a device running one model never pays that. With ``max_seconds``
    it stops early once past it, when each runner has at least :data:`MIN_TIMED_RUNS`."""
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds
    for runner in runners.values():
        for _ in range(warmup):
            runner.run(feed)
    times: dict[str, list[float]] = {name: [] for name in runners}
    while any(len(t) < runs for t in times.values()):
        if deadline is not None and time.perf_counter() > deadline and all(len(t) >= min(runs, MIN_TIMED_RUNS) for t in times.values()):
            break
        for name, runner in runners.items():
            runner.run(feed)
            for _ in range(min(TURN - 1, runs - len(times[name]))):
                t0 = time.perf_counter()
                runner.run(feed)
                times[name].append((time.perf_counter() - t0) * 1000)
    return {name: float(np.median(t)) for name, t in times.items()}


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
