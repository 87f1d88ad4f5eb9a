"""The OpenVINO runtime of the agent: serves bundles built for OpenVINO profiles (IR model.xml +
model.bin) with the device, inference precision and performance hint the packager validated
(the manifest's ``runtime_options``).

openvino is imported when such a bundle loads, never when the agent starts (a device that does
not use OpenVINO installs nothing of it: ``edgeops[agent,openvino]``).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

from edgeops.agent.memory import release_large_frees
from edgeops.agent.runtimes import InferenceError, RuntimeLoadError
from edgeops.bundle import Manifest

INSTALL_HINT = "pip install 'edgeops[agent,openvino]'"


def openvino_installed() -> bool:
    """Whether this device can import openvino (looked up without importing it)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):  # a finder that refuses it, a broken install
        return False


class OpenVinoRuntime:
    """An OpenVINO compiled model with one infer request; calls are serialized (one request at
    a time, like the LATENCY hint the profiles use)."""

    def __init__(self, model_path: Path, manifest: Manifest, threads: int = 1):
        release_large_frees()
        try:
            import openvino as ov
        except ImportError as e:
            raise RuntimeLoadError(f"bundle {manifest.name} {manifest.version} needs OpenVINO, which this device does not have: {INSTALL_HINT}") from e
        opts = manifest.runtime_options
        device = opts.get("device", "CPU")
        config = {"INFERENCE_PRECISION_HINT": opts.get("inference_precision", "f32"), "PERFORMANCE_HINT": opts.get("performance_hint", "LATENCY")}
        if device == "CPU":
            config.update({"INFERENCE_NUM_THREADS": int(threads), "NUM_STREAMS": 1})
        core = ov.Core()
        try:
            # compiled directly: listing core.available_devices first would load every plugin
            # (the NPU one too), resident for nothing (bench/agent.py, part rss-openvino)
            self._compiled = core.compile_model(str(model_path), device, config)
        except Exception as e:  # OpenVINO raises its own exception types; wrap at the boundary
            try:
                have = core.available_devices
            except Exception:
                have = "?"
            raise RuntimeLoadError(f"{model_path}: OpenVINO cannot load the model on device {device} (this device has {have}): {e}") from e
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()
        self._ports = list(self._compiled.outputs)
        self.input_names = [p.get_any_name() for p in self._compiled.inputs]
        self.output_names = [p.get_any_name() for p in self._ports]

    @property
    def compiled(self):
        """The OpenVINO compiled model (its ports name and shape the inputs and outputs)."""
        return self._compiled

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference (outputs copied out of the request's buffers)."""
        with self._lock:
            try:
                result = self._request.infer(inputs)
                return {name: np.array(result[port]) for name, port in zip(self.output_names, self._ports)}
            except Exception as e:
                raise InferenceError(f"OpenVINO: {e}") from e

    def close(self) -> None:
        """Drop the compiled model."""
        self._request = None
        self._compiled = None
