"""The demo's models: the digits CNN (v1) and the same network with a data-range fault (v2).

v1 is the scikit-learn digits CNN from :mod:`edgeops.converters.samples`, exported to ONNX and
built by the real packager. v2 is v1 plus a graph change an engineer might ship: an "exposure
guard" term computed from the share of saturated pixels in the frame,

    share = mean(input > SATURATED)               per frame
    guard = sqrt(limit - share)                   NaN when share > limit
    output = logits - (guard - guard)             0 for in-range frames, NaN otherwise

where ``limit`` is the largest saturated share of any image in the lab data set. Every
validation image is in range, so the packager's gates pass and the bundle is signed; on the
devices, camera gain drift saturates more pixels than the lab ever did and the model itself
returns NaN. Nothing in the agent is faked: its probation gate sees real NaN outputs.

Why a saturated share and not ``max(input)``: static int8 quantization puts a
QuantizeLinear/DequantizeLinear pair on the graph input with the calibration range [0, 1], so a
brighter pixel is clipped to 1.0 before any node sees it; ``max(input)`` can never exceed the
lab range in the quantized model, while the count of saturated pixels can. The guard uses only
operators the QDQ quantizer leaves in float (Greater, Cast, ReduceMean, Sub, Sqrt), so the NaN
is not quantized away either; :func:`check_fault` verifies that on the built bundle.
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgeops.errors import EdgeopsError

SATURATED = 0.99  # a pixel at full scale (inputs are in [0, 1]; int8 steps are 1/255)
INPUT_NAME = "input"
OUTPUT_NAME = "output_0"
OPSET = 17


class DemoError(EdgeopsError):
    """A demo step did not behave as expected; the message says which and what was seen."""

    exit_code = 1


@dataclass
class DemoData:
    """The trained model and its data: lab splits (for the packager) and held-out frames (live)."""

    sample: object  # edgeops.converters.samples.TrainedSample
    calibration: Path
    validation: Path
    live_frames: np.ndarray  # held-out digits, [N, 1, H, W] float32 in [0, 1]
    live_labels: np.ndarray
    lab_saturated_max: float  # largest saturated share of any lab image


def saturated_share(x: np.ndarray) -> np.ndarray:
    """Per-frame share of saturated pixels (what v2's guard computes), for [N, C, H, W]."""
    return (np.asarray(x) > SATURATED).mean(axis=tuple(range(1, np.asarray(x).ndim)))


def train(workdir: Path, seed: int = 0) -> DemoData:
    """Train the digits CNN (seconds) and write calibration.npz / validation.npz under ``workdir/data``."""
    from edgeops.converters import samples

    sample = samples.train_digits_cnn(seed=seed)
    paths = sample.save_npz(Path(workdir) / "data")
    lab = np.concatenate([sample.x_train, sample.x_val])
    return DemoData(
        sample=sample,
        calibration=paths["calibration"],
        validation=paths["validation"],
        live_frames=sample.x_val,
        live_labels=sample.y_val,
        lab_saturated_max=float(saturated_share(lab).max()),
    )


def export_onnx(sample, path: Path) -> Path:
    """Export the trained module to ONNX (TorchScript exporter: fast and deterministic)."""
    import torch

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(sample.model, sample.example_inputs, buf, dynamo=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=OPSET)
    path = Path(path)
    path.write_bytes(buf.getvalue())
    return path


def inject_range_fault(src: Path, dst: Path, limit: float) -> Path:
    """Write ``src`` plus the exposure-guard term (see module doc) to ``dst``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    if [o.name for o in g.output] != [OUTPUT_NAME] or INPUT_NAME not in [i.name for i in g.input]:
        raise DemoError(f"{src}: expected one input '{INPUT_NAME}' and one output '{OUTPUT_NAME}'")
    raw = "logits_before_guard"
    for node in g.node:
        node.output[:] = [raw if o == OUTPUT_NAME else o for o in node.output]
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array(SATURATED, dtype=np.float32), "guard_saturated"),
            numpy_helper.from_array(np.array(limit, dtype=np.float32), "guard_limit"),
        ]
    )
    g.node.extend(
        [
            helper.make_node("Greater", [INPUT_NAME, "guard_saturated"], ["guard_is_saturated"], name="guard_is_saturated"),
            helper.make_node("Cast", ["guard_is_saturated"], ["guard_saturated_f"], to=TensorProto.FLOAT, name="guard_cast"),
            # [N, 1, H, W] -> [N, 1]: one share per frame, broadcast over the logits
            helper.make_node("ReduceMean", ["guard_saturated_f"], ["guard_share"], axes=[2, 3], keepdims=0, name="guard_share"),
            helper.make_node("Sub", ["guard_limit", "guard_share"], ["guard_headroom"], name="guard_headroom"),
            helper.make_node("Sqrt", ["guard_headroom"], ["guard_sqrt"], name="guard_sqrt"),
            helper.make_node("Sub", ["guard_sqrt", "guard_sqrt"], ["guard_zero"], name="guard_zero"),
            helper.make_node("Sub", [raw, "guard_zero"], [OUTPUT_NAME], name="guard_apply"),
        ]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return Path(dst)


def build_bundle(model: Path, data: DemoData, profile: str, version: str, release: int, out: Path, step: Callable | None = None, validation: Path | None = None):
    """Build with the real packager (validation, gates, golden vectors); returns its BuildResult.

    ``validation``: the data to validate on instead of the lab split (v3: the captured field frames)."""
    from edgeops.converters.pipeline import BuildOptions, build

    opts = BuildOptions.parse(
        model=str(model),
        profile=profile,
        name="digits",
        version=version,
        release=release,
        output=str(out),
        calibration=str(data.calibration),
        validation=str(validation or data.validation),
        latency_runs=50,
    )
    # onnxruntime's calibrators print progress on stdout (percentile/entropy, when the quantization
    # search gets to them): keep stdout for --json, as `edgeops build` does
    with contextlib.redirect_stdout(sys.stderr):
        return build(opts, step=step)


def bundle_session(bundle: Path, scratch: Path):
    """Extract a bundle into ``scratch`` and open its ONNX artifact in onnxruntime (one thread)."""
    import onnxruntime as ort

    from edgeops.bundle import extract_bundle

    manifest = extract_bundle(bundle, Path(scratch))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(Path(scratch) / manifest.artifact), opts, providers=["CPUExecutionProvider"])


def run_frames(session, frames: np.ndarray) -> np.ndarray:
    """Outputs for ``frames`` run one at a time (batch 1, as on the devices); [N, classes]."""
    return np.concatenate([session.run(None, {INPUT_NAME: frames[i : i + 1]})[0] for i in range(len(frames))])


def check_fault(bundle: Path, data: DemoData, drifted: np.ndarray, scratch: Path) -> dict:
    """Confirm on the built v2 artifact: finite on every lab frame, NaN on some drifted frames."""
    session = bundle_session(bundle, scratch)
    lab = run_frames(session, data.sample.x_val)
    live = run_frames(session, drifted)
    lab_nan = int(np.isnan(lab).any(axis=1).sum())
    live_nan = int(np.isnan(live).any(axis=1).sum())
    if lab_nan:
        raise DemoError(f"{bundle}: the v2 model gives NaN on {lab_nan} lab validation frames; the fault should only hit out-of-range frames")
    if live_nan == 0:
        raise DemoError(f"{bundle}: the v2 model gives no NaN on {len(drifted)} drifted camera frames; the injected fault was optimized or quantized away")
    return {"lab_frames": len(lab), "lab_nan": lab_nan, "drifted_frames": len(live), "drifted_nan": live_nan, "drifted_nan_rate": round(live_nan / len(live), 4)}
