"""OpenVINO bundles of the small test models of :mod:`tests.support.bundles`, made without the
packager: the same ONNX graph (good, or misbehaving past a trigger) converted to an IR with
``openvino.convert_model``, golden vectors from the good model in onnxruntime, as a build has them."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from edgeops.bundle import GOLDEN_NAME, REPORT_NAME, Manifest, ManifestBudgets, Provenance, TensorSpec, describe_files, sha256_bytes, write_bundle
from edgeops.golden import GoldenVectors, Tolerance
from tests.support.bundles import N_CLASSES, N_FEATURES, make_bundle_bytes_payload

PROFILE = "x86_64-openvino-int8"


def onnx_to_ir(model: bytes) -> dict[str, bytes]:
    """``{"model/model.xml": ..., "model/model.bin": ...}`` of an ONNX model (f32 weights)."""
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="edgeops-test-ir-") as tmp:
        src = Path(tmp) / "m.onnx"
        src.write_bytes(model)
        ov.save_model(ov.convert_model(str(src)), str(Path(tmp) / "model.xml"), compress_to_fp16=False)
        return {"model/model.xml": (Path(tmp) / "model.xml").read_bytes(), "model/model.bin": (Path(tmp) / "model.bin").read_bytes()}


def write_openvino_test_bundle(path, version: str, release: int, variant: str = "good", trigger: float | None = None, latency_p95_ms: float = 20.0, name: str = "digits") -> Manifest:
    """An OpenVINO bundle (runtime ``openvino``, device CPU, f32) of the test classifier."""
    model, cases = make_bundle_bytes_payload(variant, 0, True, trigger)
    golden = GoldenVectors(cases=cases, tolerances={"probs": Tolerance(atol=1e-4, rtol=1e-3)})
    payload = {**onnx_to_ir(model), GOLDEN_NAME: golden.to_json_bytes(), REPORT_NAME: json.dumps({"summary": {"variant": variant}}).encode()}
    manifest = Manifest(
        name=name, version=version, release=release, profile=PROFILE, runtime="openvino", providers=["CPU"], artifact="model/model.xml",
        runtime_options={"device": "CPU", "inference_precision": "f32", "performance_hint": "LATENCY"}, quantization="none", task="classifier",
        inputs=[TensorSpec(name="input", dtype="float32", shape=["batch", N_FEATURES])],
        outputs=[TensorSpec(name="probs", dtype="float32", shape=["batch", N_CLASSES])],
        budgets=ManifestBudgets(latency_p95_ms=latency_p95_ms), files=describe_files(payload),
        provenance=Provenance(source_model_sha256=sha256_bytes(model), source_format="onnx", toolchain={"edgeops-tests": "1"}),
    )
    write_bundle(path, manifest, payload)
    return manifest
