"""Light in-process inference runtimes for simulated devices, with fault injection.

Which function a simulated device computes (``--runtime``):

- ``onnx`` (default for onnxruntime bundles): the bundle's real ONNX model, run by one
  onnxruntime session per model file (keyed by the artifact's sha256 from the verified
  manifest) shared by every device of the simulator process. The outputs are the model's own,
  so a regression built into the model itself (NaN, a different function) shows on simulated
  devices exactly as on real ones. Sharing the session is a simulation shortcut for memory:
  10,000 devices do not load 10,000 copies of one model.
- ``openvino`` (default for OpenVINO bundles where openvino is installed): the bundle's IR in
  the agent's own OpenVINO runtime (device, precision and hint from the manifest), one compiled
  model per artifact shared the same way.
- ``golden`` (numpy only; any artifact, e.g. LiteRT): a nearest-neighbour lookup over the
  bundle's golden vectors: the output of the golden input closest (L2) to the request. Live
  traffic is drawn around the golden inputs, so the answers are the model's build-time ones.
  This is the light runtime the fleet benchmark uses: a few microseconds, and it never
  releases the GIL, so the agent's own latency timer around ``run`` is not stretched by the
  other threads of a busy simulator process (onnxruntime releases the GIL in ``run``; on an
  oversubscribed host, re-acquiring it made a few of 5,000 devices fail a 60 ms p95 gate
  around a model that takes microseconds). NaN, crash and slow faults work the same on both.

Faults (see :mod:`edgeops.fleet.simulator.faults`) wrap either runtime per device and per
bundle version: ``nan`` replaces floating outputs with NaN, ``crash`` raises
:class:`~edgeops.agent.runtimes.InferenceError`, ``slow`` sleeps ``factor x`` the manifest's
latency budget inside ``run`` so the agent's own timer (perf_counter around ``run``) measures
the slowdown. By default ``nan``/``crash`` hit live inputs only (golden inputs pass, the device
activates the version, probation must catch it) and ``slow`` hits every inference (the
self-test's latency gate catches it). Sleeping costs a worker thread of the simulator process,
not the process: devices are spread over several tick threads (see ``worker``), and a slow
device's self-test is ``latency_runs + golden cases + 1`` inferences.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from edgeops.bundle import GOLDEN_NAME, Manifest
from edgeops.golden import GoldenVectors
from edgeops.agent.runtimes import InferenceError, RuntimeLoadError

from edgeops.fleet.simulator.faults import DeviceFaults

RUNTIME_KINDS = ("auto", "onnx", "openvino", "golden")
TRAFFIC_VARIANTS = 8  # noisy copies of each golden input cycled as live traffic
TRAFFIC_NOISE = 0.01  # relative to the input's std: small enough that the top-1 class stays


def files_dir_of(model_path: Path, manifest: Manifest) -> Path:
    """The installed bundle's files folder (the artifact path minus ``manifest.artifact``)."""
    p = Path(model_path)
    for _ in Path(manifest.artifact).parts:
        p = p.parent
    return p


class _OnnxModel:
    """One shared onnxruntime session (``InferenceSession.run`` is thread-safe)."""

    def __init__(self, path: Path):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is in the agent extra
            raise RuntimeLoadError("the 'onnx' simulator runtime needs onnxruntime; use --runtime golden") from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise RuntimeLoadError(f"{path}: onnxruntime cannot load the model: {e}") from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            outs = self.session.run(None, {k: inputs[k] for k in self.input_names})
        except Exception as e:
            raise InferenceError(f"onnxruntime: {e}") from e
        return dict(zip(self.output_names, outs))


class _OpenVinoModel:
    """One shared compiled OpenVINO model (the agent's own runtime, with the bundle's device and
    precision; its infer request is serialized by a lock)."""

    def __init__(self, path: Path, manifest: Manifest):
        from edgeops.agent.runtime_openvino import OpenVinoRuntime

        self._runtime = OpenVinoRuntime(path, manifest, 1)
        self.input_names = self._runtime.input_names
        self.output_names = self._runtime.output_names

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._runtime.run({k: inputs[k] for k in self.input_names})


def _auto_kind(model_path: Path, manifest: Manifest) -> str:
    """The real model where this process can run it: onnxruntime bundles in onnxruntime, OpenVINO
    bundles in OpenVINO when it is installed; the golden lookup otherwise (LiteRT, no OpenVINO)."""
    if manifest.runtime == "onnxruntime" and str(model_path).endswith(".onnx"):
        return "onnx"
    if manifest.runtime == "openvino":
        from edgeops.agent.runtime_openvino import openvino_installed

        if openvino_installed():
            return "openvino"
    return "golden"


class _GoldenModel:
    """Nearest golden input -> its expected outputs (numpy only)."""

    def __init__(self, golden: GoldenVectors, manifest: Manifest):
        if not golden.cases:
            raise RuntimeLoadError(f"{manifest.name} {manifest.version}: the 'golden' simulator runtime needs golden vectors in the bundle")
        self.input_names = [s.name for s in manifest.inputs]
        self.output_names = [s.name for s in manifest.outputs]
        keys = [np.concatenate([np.asarray(c[0][n], dtype=np.float64).ravel() for n in self.input_names]) for c in golden.cases]
        self._outputs = [c[1] for c in golden.cases]
        # One matrix per input size (cases normally share one): a single vectorised distance per run.
        self._by_size: dict[int, tuple[np.ndarray, list[int]]] = {}
        for i, k in enumerate(keys):
            rows, idx = self._by_size.get(k.size, ([], []))
            rows.append(k)
            idx.append(i)
            self._by_size[k.size] = (rows, idx)
        self._by_size = {n: (np.stack(rows), idx) for n, (rows, idx) in self._by_size.items()}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            x = np.concatenate([np.asarray(inputs[n], dtype=np.float64).ravel() for n in self.input_names])
        except KeyError as e:
            raise InferenceError(f"missing input {e}") from e
        hit = self._by_size.get(x.size)
        if hit is None:
            raise InferenceError(f"input of {x.size} values matches no golden input's size")
        keys, idx = hit
        best = idx[int(np.argmin(((keys - x) ** 2).sum(axis=1)))]
        return {k: np.array(v, copy=True) for k, v in self._outputs[best].items()}


class SharedModels:
    """Per-process cache of loaded model functions, golden inputs and traffic inputs."""

    def __init__(self, kind: str = "auto"):
        if kind not in RUNTIME_KINDS:
            raise ValueError(f"runtime kind {kind!r}: use one of {', '.join(RUNTIME_KINDS)}")
        self.kind = kind
        self._lock = threading.Lock()
        self._models: dict[str, object] = {}
        self._golden: dict[str, tuple[GoldenVectors | None, frozenset[bytes]]] = {}
        self._traffic: dict[str, list[dict[str, np.ndarray]]] = {}
        self.loads = 0

    def _artifact_key(self, manifest: Manifest) -> str:
        entry = manifest.files.get(manifest.artifact)
        return entry.sha256 if entry else f"{manifest.name}@{manifest.version}"

    def golden(self, files_dir: Path, manifest: Manifest) -> tuple[GoldenVectors | None, frozenset[bytes]]:
        """The bundle's golden vectors and the byte strings of their inputs (cached)."""
        key = self._artifact_key(manifest) + "/golden"
        with self._lock:
            hit = self._golden.get(key)
        if hit is not None:
            return hit
        path = Path(files_dir) / GOLDEN_NAME
        golden = GoldenVectors.from_json_bytes(path.read_bytes()) if path.is_file() else None
        seen = frozenset(_input_bytes(c[0]) for c in golden.cases) if golden else frozenset()
        with self._lock:
            self._golden.setdefault(key, (golden, seen))
            return self._golden[key]

    def model(self, model_path: Path, manifest: Manifest) -> object:
        """The shared model function of this artifact (loaded once per process)."""
        key = self._artifact_key(manifest)
        with self._lock:
            m = self._models.get(key)
        if m is not None:
            return m
        kind = self.kind
        if kind == "auto":
            kind = _auto_kind(model_path, manifest)
        if kind == "onnx":
            m = _OnnxModel(model_path)
        elif kind == "openvino":
            m = _OpenVinoModel(model_path, manifest)
        else:
            golden, _ = self.golden(files_dir_of(model_path, manifest), manifest)
            if golden is None:
                raise RuntimeLoadError(f"{manifest.name} {manifest.version}: no golden.json for the 'golden' simulator runtime")
            m = _GoldenModel(golden, manifest)
        with self._lock:
            self.loads += 1
            self._models.setdefault(key, m)
            return self._models[key]

    def traffic(self, key: str, read_golden: Callable[[], GoldenVectors | None]) -> list[dict[str, np.ndarray]]:
        """Live inputs for a bundle: noisy copies of its golden inputs (cached, deterministic);
        ``read_golden`` (e.g. ``LoadedModel.golden``) is called only on a cache miss."""
        with self._lock:
            hit = self._traffic.get(key)
        if hit is not None:
            return hit
        out: list[dict[str, np.ndarray]] = []
        golden = read_golden()
        if golden and golden.cases:
            rng = np.random.default_rng(7)
            for i in range(TRAFFIC_VARIANTS):
                base = golden.cases[i % len(golden.cases)][0]
                sample = {}
                for name, v in base.items():
                    a = np.asarray(v)
                    if a.dtype.kind == "f":
                        scale = TRAFFIC_NOISE * (float(np.std(a)) or 1.0)
                        a = (a + rng.normal(0.0, scale, size=a.shape)).astype(a.dtype)
                    sample[name] = a
                out.append(sample)
        with self._lock:
            self._traffic.setdefault(key, out)
            return self._traffic[key]

    def runtime_factory(self, faults: DeviceFaults):
        """A RuntimeFactory for one device: shared model function + that device's faults."""

        def factory(model_path: Path, manifest: Manifest, providers: list[str], threads: int = 1) -> "SimRuntime":
            files = files_dir_of(model_path, manifest)
            _, golden_inputs = self.golden(files, manifest)
            return SimRuntime(self.model(model_path, manifest), manifest, faults, golden_inputs)

        return factory


def _input_bytes(inputs: dict[str, np.ndarray]) -> bytes:
    return b"|".join(np.ascontiguousarray(inputs[k]).tobytes() for k in sorted(inputs))


class SimRuntime:
    """The agent's Runtime protocol over a shared model function, with this device's faults."""

    def __init__(self, model, manifest: Manifest, faults: DeviceFaults, golden_inputs: frozenset[bytes]):
        self._model = model
        self.input_names = list(model.input_names)
        self.output_names = list(model.output_names)
        name, version = manifest.name, manifest.version
        self.nan = faults.active("nan", name, version)
        self.crash = faults.active("crash", name, version)
        self.slow = faults.active("slow", name, version)
        self.slow_s = (self.slow.factor * manifest.budgets.latency_p95_ms / 1000.0) if self.slow else 0.0
        self._golden_inputs = golden_inputs
        self.runs = 0

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One inference, with the faults that cover this bundle version."""
        self.runs += 1
        live = None
        if self.nan or self.crash:
            live = _input_bytes(inputs) not in self._golden_inputs
        if self.crash and (self.crash.golden or live):
            raise InferenceError(f"simulated crash ({self.crash.text})")
        outputs = self._model.run(inputs)
        if self.slow_s:
            time.sleep(self.slow_s)  # measured by the agent's own timer around run()
        if self.nan and (self.nan.golden or live):
            outputs = {k: (np.full_like(v, np.nan) if np.asarray(v).dtype.kind == "f" else v) for k, v in outputs.items()}
        return outputs

    def close(self) -> None:
        """Nothing to release: the model function is shared by the process."""
