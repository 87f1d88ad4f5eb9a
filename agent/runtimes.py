"""Inference runtimes: onnxruntime, LiteRT (ai-edge-litert, or tflite_runtime) and OpenVINO
(:mod:`edgeops.agent.runtime_openvino`), loaded lazily.

A runtime takes a dict of named numpy arrays and returns a dict of named outputs. The agent
creates runtimes through a *runtime factory* (``(model_path, manifest, providers, threads) ->
Runtime``) so tests and the fleet simulator can inject light in-process ones; the default
factory is :func:`load_runtime`. Runtime libraries are imported inside functions: importing
this module imports neither.

Before the first model loads, :func:`edgeops.agent.memory.release_large_frees` pins glibc's
mmap threshold, so the memory of a replaced or rolled-back version goes back to the OS.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from edgeops.agent.memory import release_large_frees
from edgeops.bundle import Manifest
from edgeops.errors import AgentError, BundleError


class RuntimeLoadError(AgentError):
    """The model could not be loaded by its runtime on this device."""


class InferenceError(AgentError):
    """An inference failed inside the runtime (bad input, or a model that breaks at run time)."""


class Runtime(Protocol):
    """What the agent needs from an inference runtime."""

    input_names: list[str]
    output_names: list[str]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference; raises InferenceError."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...


RuntimeFactory = Callable[[Path, Manifest, list[str], int], Runtime]

def available_onnx_providers() -> list[str]:
    """Execution providers this onnxruntime build offers."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose_providers(wanted: list[str], available: list[str]) -> list[str]:
    """The wanted providers this device has, in the wanted order; CPU as the last resort."""
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chosen and "CPUExecutionProvider" in available:
        chosen.append("CPUExecutionProvider")
    if not chosen:
        raise RuntimeLoadError(f"none of the providers {wanted} is available (this onnxruntime has {available})")
    return chosen


class OnnxRuntime:
    """An onnxruntime InferenceSession (``run`` is thread-safe)."""

    def __init__(self, model_path: Path, providers: list[str], threads: int = 1):
        release_large_frees()
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is in the agent extra
            raise RuntimeLoadError("onnxruntime is not installed: pip install 'edgeops[agent]'") from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.requested_providers = choose_providers(providers, available_onnx_providers())
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=opts, providers=self.requested_providers)
        except Exception as e:  # onnxruntime raises its own exception types; wrap at the boundary
            raise RuntimeLoadError(f"{model_path}: onnxruntime cannot load the model: {e}") from e
        # What the session really runs on: onnxruntime drops a provider whose libraries fail to
        # load (TensorRT without libnvinfer, CUDA without a driver) with only a log line, so the
        # requested list can claim a GPU the model never touches.
        self.providers = list(self._session.get_providers())
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference."""
        try:
            outs = self._session.run(None, inputs)
        except Exception as e:
            raise InferenceError(f"onnxruntime: {e}") from e
        return dict(zip(self.output_names, outs))

    def close(self) -> None:
        """Drop the session."""
        self._session = None


class LiteRtRuntime:
    """A LiteRT (TFLite) model run through its signature, as the packager validated it (names
    and float I/O of :class:`edgeops.litert.SignatureModel`); calls are serialized because
    interpreters are not thread-safe."""

    def __init__(self, model_path: Path, threads: int = 1):
        release_large_frees()
        from edgeops.errors import ModelLoadError
        from edgeops.litert import SignatureModel

        try:
            self._model = SignatureModel(model_path=model_path, threads=threads, label=str(model_path))
        except ModelLoadError as e:
            raise RuntimeLoadError(str(e)) from e
        self._lock = threading.Lock()
        self.input_names = [t.name for t in self._model.inputs]
        self.output_names = [t.name for t in self._model.outputs]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference."""
        with self._lock:
            try:
                return self._model.run(inputs)
            except KeyError as e:
                raise InferenceError(f"LiteRT: missing input {e}") from e
            except Exception as e:
                raise InferenceError(f"LiteRT: {e}") from e

    def close(self) -> None:
        """Drop the interpreter."""
        self._model = None


def execution_providers(runtime: object) -> list[str] | None:
    """The execution providers a loaded runtime really runs on (onnxruntime only), else None."""
    providers = getattr(runtime, "providers", None)
    return list(providers) if isinstance(providers, list) else None


def accelerator_fallback(wanted: list[str], ran_on: list[str]) -> str | None:
    """Why a run is not on the accelerator the profile asks for, or None when it is (or when
    the profile wants none): the profile lists a provider other than CPU, and the session's
    first provider is the CPU."""
    accelerators = [p for p in wanted if p != "CPUExecutionProvider"]
    if not accelerators or (ran_on and ran_on[0] != "CPUExecutionProvider"):
        return None
    return f"the profile runs on {accelerators} but this session runs on {ran_on}: onnxruntime fell back to the CPU (install onnxruntime-gpu with the CUDA/TensorRT libraries the profile needs)"


def load_runtime(model_path: Path, manifest: Manifest, providers: list[str], threads: int = 1) -> Runtime:
    """The default runtime factory: the manifest's runtime with the profile's providers."""
    if manifest.runtime == "onnxruntime":
        return OnnxRuntime(model_path, providers or manifest.providers, threads)
    if manifest.runtime == "litert":
        return LiteRtRuntime(model_path, threads)
    if manifest.runtime == "openvino":
        from edgeops.agent.runtime_openvino import OpenVinoRuntime

        return OpenVinoRuntime(model_path, manifest, threads)
    raise RuntimeLoadError(f"runtime {manifest.runtime!r} is not supported by this agent")


def check_runtime_installed(manifest: Manifest) -> None:
    """BundleError for a bundle whose runtime library this device lacks (OpenVINO is an optional
    extra), looked up without importing it: part of the compatibility check of the verifying
    pass, so the bundle is refused before anything is installed or activated."""
    if manifest.runtime == "openvino":
        from edgeops.agent.runtime_openvino import INSTALL_HINT, openvino_installed

        if not openvino_installed():
            raise BundleError(f"bundle {manifest.name} {manifest.version} needs the OpenVINO runtime, which is not installed on this device: {INSTALL_HINT}")
