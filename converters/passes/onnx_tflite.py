"""ONNX -> .tflite (float32) with onnx2tf, checked against onnxruntime before anything else runs.

Why onnx2tf: bench/onnx_to_tflite.py converted more real models with it than with the other
maintained path (onnx2torch -> litert-torch), and onnx2torch cannot be installed here at all
(it needs torchvision, which has no build for this torch). See docs/benchmarks.md.

What the pass does, in order:

1. **Preflight**, without importing TensorFlow: every node (subgraphs included) must be in the
   default ONNX domain and have an onnx2tf converter; otherwise :class:`UnsupportedOperatorError`
   names the node, op and domain.
2. **Constant folding** with onnxruntime's basic offline optimization: onnx2tf needs weights
   as initializers, and many exports compute them (``Constant`` / ``ConstantOfShape`` nodes).
3. **Conversion** in a child process (``python -m edgeops.converters.passes.onnx_tflite``):
   TensorFlow takes about a gigabyte and seconds to import, prints on stdout and keeps global
   state; a child keeps all of that out of the build and frees it when done. 3-D..5-D inputs
   keep the ONNX layout (NCHW; onnx2tf adds the transposes), input and output names are the
   ONNX ones. A conversion failure is an error naming the op onnx2tf stopped at.
4. **Parity** of the float model against the ONNX model in onnxruntime on the user's data
   (``ctx.calibration``, see the pipeline) or generated inputs (integer inputs get values valid
   for what their name says): every output must reach ``min_cosine``, or the
   build stops with :class:`ConversionMismatchError`. onnx2tf writes 3-D..5-D outputs
   channels-last; such an output is compared transposed and the report says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path

import numpy as np
from pydantic import Field

from edgeops.converters.errors import ConversionMismatchError, ToolUnavailableError
from edgeops.converters.passes import Artifact, Pass, PassContext, PassOptions, register_pass
from edgeops.converters.tflite_intake import with_signature
from edgeops.errors import ModelLoadError, UnsupportedOperatorError

DEFAULT_DOMAINS = ("", "ai.onnx")
# onnx2tf lays N-D feature maps out channels-last; these permutations take an ONNX output there.
CHANNELS_LAST = {3: (0, 2, 1), 4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}
_LAST: dict = {}  # (sha256 of the ONNX model, options) -> (tflite bytes, tool versions, Parity)


@dataclass(frozen=True)
class Parity:
    """What the parity check found: the worst cosine over outputs and feeds, and the outputs the
    .tflite gives channels-last ({name: "channels-last [..] (ONNX [..])"})."""

    worst_cosine: float
    channels_last: dict[str, str]


class OnnxToTfliteOptions(PassOptions):
    min_cosine: float = Field(default=0.999, ge=-1, le=1, description="worst cosine per output the float .tflite must reach against onnxruntime")
    parity_feeds: int = Field(default=4, ge=1, le=64, description="generated feeds compared with onnxruntime")
    timeout_s: int = Field(default=900, ge=10, description="time the onnx2tf child process may take")


@register_pass
class OnnxToTflite(Pass):
    name = "onnx-to-tflite"
    description = "ONNX -> .tflite (float32) with onnx2tf in a child process, parity-checked against onnxruntime"
    Options = OnnxToTfliteOptions
    input_format = "onnx"

    def run(self, artifact: Artifact, ctx: PassContext) -> Artifact:
        import onnx

        model = onnx.load_model_from_string(artifact.data)
        preflight(model)
        key = (hashlib.sha256(artifact.data).hexdigest(), self.options)
        if key not in _LAST:
            folded = tf_safe_node_names(fold_constants(artifact.data))
            data, versions = convert_in_child(folded, self.options.timeout_s)
            parity = check_parity(folded, data, self.options.min_cosine, self.options.parity_feeds, ctx.calibration)
            # One entry: building one model for two LiteRT profiles (arm64 + Edge TPU) converts it once.
            _LAST.clear()
            _LAST[key] = (data, versions, parity)
        data, versions, parity = _LAST[key]
        ctx.log.append(f"onnx-to-tflite: onnx2tf {versions.get('onnx2tf', '?')} (TensorFlow {versions.get('tensorflow', '?')}), float32, "
                       f"constants folded by onnxruntime; parity vs onnxruntime: worst cosine {parity.worst_cosine:.6f}")
        if parity.channels_last:
            ctx.warn("onnx2tf writes feature-map outputs channels-last: " + "; ".join(f"output '{n}' is {s}" for n, s in parity.channels_last.items())
                     + " (the manifest lists the .tflite shapes; the device gets them as listed)")
        return Artifact("tflite", data=data)


def supported_ops() -> set[str]:
    """The ONNX op types onnx2tf has a converter for (its ``ops`` modules), read without importing it."""
    spec = util.find_spec("onnx2tf")
    if spec is None or not spec.submodule_search_locations:
        raise ToolUnavailableError(
            "ONNX -> TFLite needs onnx2tf, which is not installed: run scripts/setup.sh, or "
            "pip install -c constraints.txt 'edgeops[tflite]' && pip install --no-deps onnx2tf==1.29.24"
        )
    ops_dir = Path(next(iter(spec.submodule_search_locations))) / "ops"
    return {p.stem for p in ops_dir.glob("*.py") if not p.stem.startswith("_")}


def preflight(model) -> None:
    """Refuse, naming node, op and domain, what onnx2tf cannot convert (custom domains, unknown ops)."""
    from edgeops.converters.graph import iter_nodes

    known = supported_ops()
    custom, unknown = [], []
    for where, node in iter_nodes(model.graph):
        if node.domain not in DEFAULT_DOMAINS:
            custom.append(f"node '{where}' (op {node.op_type}, domain '{node.domain}')")
        elif node.op_type not in known:
            unknown.append(f"node '{where}' (op {node.op_type})")
    if custom:
        raise UnsupportedOperatorError(
            f"ONNX -> TFLite: {', '.join(custom[:5])}{f' and {len(custom) - 5} more' if len(custom) > 5 else ''} "
            "use(s) a custom operator domain, which has no TFLite equivalent; onnxruntime profiles (x86_64-*, raspberry-pi-*, jetson-*) "
            "run the com.microsoft domain. Export the model with standard ONNX ops for a LiteRT profile"
        )
    if unknown:
        raise UnsupportedOperatorError(
            f"ONNX -> TFLite: onnx2tf has no converter for {', '.join(unknown[:5])}{f' and {len(unknown) - 5} more' if len(unknown) > 5 else ''}; "
            "rewrite that part of the model with other ops, or build for an onnxruntime profile (x86_64-*, raspberry-pi-*, jetson-*)"
        )


def fold_constants(data: bytes) -> bytes:
    """The model after onnxruntime's basic offline optimization (constant folding, no contrib ops)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgeops-fold-") as tmp:
        out = Path(tmp) / "folded.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(out)
        so.log_severity_level = 3
        try:
            ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelLoadError(f"ONNX -> TFLite: onnxruntime cannot load the model to fold its constants: {str(e).strip().splitlines()[0][:400]}") from e
        return out.read_bytes()


def tf_safe_node_names(data: bytes) -> bytes:
    """Every node named, with characters TensorFlow takes in a scope name ([A-Za-z0-9_./>-]).

    Node names mean nothing to the computation; TensorFlow refuses others ('Softmax@0', as
    onnxruntime's optimizer names unnamed nodes, is "not a valid scope name").
    """
    import onnx

    from edgeops.converters.graph import iter_nodes

    model = onnx.load_model_from_string(data)
    seen: set[str] = set()
    changed = False
    for index, (_, node) in enumerate(iter_nodes(model.graph)):
        name = re.sub(r"[^A-Za-z0-9_./>-]", "_", node.name) or f"{node.op_type}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        seen.add(name)
        if name != node.name:
            node.name = name
            changed = True
    return model.SerializeToString() if changed else data


def convert_in_child(data: bytes, timeout_s: int) -> tuple[bytes, dict[str, str]]:
    """Run onnx2tf in a child process; (float32 .tflite bytes, tool versions)."""
    with tempfile.TemporaryDirectory(prefix="edgeops-onnx2tf-") as tmp:
        src = Path(tmp) / "model.onnx"
        src.write_bytes(data)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0", TF_ENABLE_ONEDNN_OPTS="0")
        try:
            proc = subprocess.run([sys.executable, "-m", "edgeops.converters.passes.onnx_tflite", str(src), tmp],
                                  capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired as e:
            raise ModelLoadError(f"ONNX -> TFLite: onnx2tf did not finish in {timeout_s} s") from e
        result = _last_json(proc.stdout)
        if proc.returncode != 0 or result is None or "error" in result:
            raise _conversion_error(result, proc)
        import onnx

        model = onnx.load_model_from_string(data)
        initializers = {t.name for t in model.graph.initializer}
        inputs = [i.name for i in model.graph.input if i.name not in initializers]
        try:
            # named as the ONNX model's inputs and outputs (onnx2tf keeps their order; the parity check that follows catches a mix-up)
            tflite = with_signature((Path(tmp) / result["tflite"]).read_bytes(), inputs, [o.name for o in model.graph.output])
        except ConversionMismatchError as e:
            raise ConversionMismatchError(f"ONNX -> TFLite: {e} (the ONNX model's)") from e
        return tflite, result.get("versions", {})


def _last_json(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{\"edgeops\""):
            return json.loads(line)
    return None


def _conversion_error(result: dict | None, proc) -> Exception:
    if result and result.get("error") == "tool":
        return ToolUnavailableError(f"ONNX -> TFLite: {result['message']}; run scripts/setup.sh (installs TensorFlow and onnx2tf)")
    text = (proc.stdout or "") + "\n" + (proc.stderr or "")
    # onnx2tf logs the node it stopped at as "onnx_op_type: X onnx_op_name: Y".
    op = re.findall(r"onnx_op_type:\s*(\S+)", text)
    name = re.findall(r"onnx_op_name:\s*(\S+)", text)
    message = (result or {}).get("message") or (text.strip().splitlines() or ["no output"])[-1]
    if op:
        return UnsupportedOperatorError(
            f"ONNX -> TFLite: onnx2tf could not convert node '{name[-1] if name else '?'}' (op {op[-1]}): {message[:400]}; "
            "rewrite that part of the model, fix its input shapes with --input-shape, or build for an onnxruntime profile"
        )
    return ModelLoadError(f"ONNX -> TFLite: onnx2tf failed (exit {proc.returncode}): {message[:500]}")


def check_parity(onnx_data: bytes, tflite_data: bytes, min_cosine: float, feeds: int, data=None) -> Parity:
    """Compare the float .tflite with onnxruntime on ``data`` (a Dataset: the user's, where an input
    cannot be generated, such as a sample rate) or generated inputs; ConversionMismatchError below ``min_cosine``."""
    from edgeops.converters.data import generated_dataset
    from edgeops.converters.runtime import OnnxRunner, TfliteRunner

    ref = OnnxRunner(onnx_data, label="ONNX model")
    try:
        built = TfliteRunner(tflite_data, label="converted model")
    except ModelLoadError as e:
        flex = re.findall(r"\((Flex\w+)\)", str(e))
        if flex:
            # onnx2tf lets TensorFlow's converter fall back to TF ops ("Select TF ops"), which LiteRT
            # runs only with the Flex delegate: no device profile here has it.
            raise UnsupportedOperatorError(
                f"ONNX -> TFLite: onnx2tf could map part of the model only to the TensorFlow op(s) {', '.join(sorted(set(flex)))}, "
                "which LiteRT runs only with the Flex delegate (not in the device runtimes); rewrite that part with other ONNX ops, "
                "or build for an onnxruntime profile"
            ) from e
        raise
    in_pairs, out_pairs = _pairs(ref.inputs, built.inputs), _pairs(ref.outputs, built.outputs)
    if in_pairs is None or out_pairs is None:
        raise ConversionMismatchError(
            f"ONNX -> TFLite: the .tflite signature has inputs {[i.name for i in built.inputs]} and outputs {[o.name for o in built.outputs]}, "
            f"the ONNX model {[i.name for i in ref.inputs]} and {[o.name for o in ref.outputs]}"
        )
    notes: dict[str, str] = {}
    worst = 1.0
    for feed in (data or generated_dataset(ref.inputs)).batches(ref.inputs, limit=feeds):
        r = ref.run(feed)
        b = built.run({bn: feed[rn] for rn, bn in in_pairs})
        for rn, bn in out_pairs:
            rv, bv = np.asarray(r[rn]), np.asarray(b[bn])
            if rv.shape != bv.shape:
                perm = CHANNELS_LAST.get(rv.ndim)
                if perm is None or rv.transpose(perm).shape != bv.shape:
                    raise ConversionMismatchError(f"ONNX -> TFLite: output '{rn}' is {list(bv.shape)} in the .tflite and {list(rv.shape)} in the ONNX model")
                rv = rv.transpose(perm)
                notes[bn] = f"channels-last {list(bv.shape)} (ONNX {list(r[rn].shape)})"
            cos = _cosine(rv, bv)
            worst = min(worst, cos)
            if cos < min_cosine:
                raise ConversionMismatchError(
                    f"ONNX -> TFLite: the converted model differs from the ONNX model on output '{rn}' (cosine {cos:.5f} < {min_cosine}, "
                    f"max abs error {float(np.max(np.abs(rv.astype(np.float64) - bv))):.4g}); build for an onnxruntime profile, or report the model to onnx2tf"
                )
    return Parity(worst, notes)


def _pairs(ref, built) -> list[tuple[str, str]] | None:
    """(ONNX name, .tflite name) per tensor: by name when the names agree, else by position; None when the counts differ."""
    if {t.name for t in ref} == {t.name for t in built}:
        return [(t.name, t.name) for t in ref]
    if len(ref) != len(built):
        return None
    return [(r.name, b.name) for r, b in zip(ref, built)]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a64.dtype.kind not in "fc" or not np.isfinite(a64).all() or not np.isfinite(b64).all():
        return 1.0 if np.array_equal(a64, b64) else -1.0
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a64 @ b64 / (na * nb))


def _child(src: str, out_dir: str) -> int:
    """The child process: convert with onnx2tf, print one JSON line (stdout) with the result."""
    import contextlib
    import logging

    def emit(doc: dict) -> None:
        sys.__stdout__.write(json.dumps({"edgeops": 1, **doc}) + "\n")
        sys.__stdout__.flush()

    logging.disable(logging.WARNING)
    try:
        import onnx
        import onnx2tf
    except Exception as e:  # ImportError, or TensorFlow failing to load
        emit({"error": "tool", "message": f"onnx2tf cannot be imported ({type(e).__name__}: {e})"})
        return 3
    model = onnx.load(src)
    initializers = {t.name for t in model.graph.initializer}
    layout_inputs = [i.name for i in model.graph.input if i.name not in initializers and 3 <= len(i.type.tensor_type.shape.dim) <= 5]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            onnx2tf.convert(input_onnx_file_path=src, output_folder_path=out_dir, non_verbose=True, copy_onnx_input_output_names_to_tflite=True, output_signaturedefs=True,
                            keep_ncw_or_nchw_or_ncdhw_input_names=layout_inputs or None, not_use_onnxsim=True, disable_model_save=False)
    except BaseException as e:  # onnx2tf calls sys.exit on some failures
        emit({"error": "convert", "message": f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"})
        return 4
    found = sorted(Path(out_dir).glob("*_float32.tflite"))
    if not found:
        emit({"error": "convert", "message": "onnx2tf wrote no *_float32.tflite"})
        return 4
    emit({"tflite": found[0].name, "versions": {p: metadata.version(p) for p in ("onnx2tf", "tensorflow")}})
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
