"""OpenVINO passes: ONNX -> OpenVINO IR, and int8 with NNCF post-training quantization.

* ``convert-openvino``: ``openvino.convert_model`` on the (normalized) ONNX model; the IR is
  saved with ``openvino.save_model`` (``compress_to_fp16`` stores float weights as fp16, decompressed
  to f32 at load; left off when NNCF quantizes next, so it calibrates the f32 weights).
* ``quantize-openvino``: ``nncf.quantize`` on the same calibration feeds the onnxruntime path uses.
  OpenVINO then runs int8 convolutions and MatMuls with requantization and the element-wise ops
  after them (hard-swish, SiLU, residual adds) fused into the kernel, which onnxruntime's QDQ
  graphs run as separate nodes (issue #15's measurements: up to 1.9x on PP-OCRv4).

An IR is two files (``model.xml`` graph, ``model.bin`` weights): between passes it travels as an
:class:`IrModel` in ``Artifact.module`` (``Artifact.data`` holds the .xml). :class:`OpenVinoRunner`
runs one on the build host with the device's inference precision, for validation, golden vectors
and latency. openvino and nncf are imported inside functions (the ``openvino-build`` extra).
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgeops.bundle import TensorSpec
from edgeops.converters.errors import CalibrationMissingError, Int8QuantizationError, ToolUnavailableError
from edgeops.converters.passes import Artifact, Pass, PassContext, PassOptions, register_pass
from edgeops.errors import ModelLoadError

# CPU flags with which OpenVINO's CPU plugin computes bf16 (and uses it by default for float parts).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class IrModel:
    """An OpenVINO IR in memory: the graph (.xml) and the weights (.bin)."""

    xml: bytes
    bin: bytes
    # the ONNX model the IR was converted from: other candidates (the float IR) are built from it
    source_onnx: bytes | None = field(default=None, compare=False, repr=False)
    # how NNCF quantized it (None: float IR): {"fast_bias_correction": bool, "transformer": bool}; a
    # candidate with the other bias correction is built from source_onnx with the same settings
    nncf: dict | None = field(default=None, compare=False, repr=False)

    def members(self, artifact_name: str = "model/model.xml") -> dict[str, bytes]:
        """Bundle members: ``model/model.xml`` and ``model/model.bin`` beside it (OpenVINO finds the
        weights by the graph's file name)."""
        return {artifact_name: self.xml, str(Path(artifact_name).with_suffix(".bin")): self.bin}

    @property
    def size(self) -> int:
        return len(self.xml) + len(self.bin)


def ir_artifact(ir: IrModel) -> Artifact:
    """An Artifact holding an IR (format 'openvino')."""
    return Artifact("openvino", data=ir.xml, module=ir)


def _openvino():
    try:
        import openvino as ov
    except ImportError as e:
        raise ToolUnavailableError("openvino is not installed: pip install 'edgeops[openvino-build]' (OpenVINO profiles)") from e
    return ov


_AUTO_NAME = re.compile(r"^(?P<type>[A-Za-z0-9]+)_\d+$")


def stable_names(model) -> None:
    """Rename the ops OpenVINO named itself (``Constant_77465``, ``Reshape_97136``: a name and a
    process-wide counter) by their position in the graph, so the same model gives the same .xml
    in any process. Path-like names that came from the ONNX model (``/0/Conv``) are kept."""
    for index, op in enumerate(model.get_ordered_ops()):
        m = _AUTO_NAME.match(op.get_friendly_name())
        if m:
            op.set_friendly_name(f"{m.group('type')}_at{index}")


def save_ir(model, compress_to_fp16: bool) -> IrModel:
    """``openvino.save_model`` into memory, byte-reproducible for the same model (see :func:`stable_names`)."""
    ov = _openvino()
    stable_names(model)
    with tempfile.TemporaryDirectory(prefix="edgeops-ov-") as tmp:
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
        return IrModel(xml=xml.read_bytes(), bin=xml.with_suffix(".bin").read_bytes())


def read_ir(ir: IrModel):
    """The IR as an ``openvino.Model``."""
    ov = _openvino()
    weights = ov.Tensor(np.frombuffer(ir.bin, dtype=np.uint8).copy()) if ir.bin else ov.Tensor(np.zeros(0, np.uint8))
    return ov.Core().read_model(model=ir.xml.decode(), weights=weights)


class ConvertOptions(PassOptions):
    compress_to_fp16: bool = Field(default=True, description="store float weights as fp16 in the .bin (halves it; OpenVINO decompresses them to f32 at load)")


@register_pass
class ConvertOpenVino(Pass):
    name = "convert-openvino"
    description = "ONNX -> OpenVINO IR with openvino.convert_model, saved with openvino.save_model"
    Options = ConvertOptions

    def run(self, artifact: Artifact, ctx: PassContext) -> Artifact:
        ov = _openvino()
        with tempfile.TemporaryDirectory(prefix="edgeops-ov-") as tmp:
            src = Path(tmp) / "model.onnx"
            src.write_bytes(artifact.data)
            try:
                model = ov.convert_model(str(src))
            except Exception as e:  # OpenVINO's frontend raises its own exception types
                raise ModelLoadError(f"OpenVINO cannot convert the ONNX model: {openvino_error_summary(e)}. An onnxruntime profile "
                                     "(e.g. x86_64-avx512-vnni) runs the ONNX model as it is") from e
            ir = save_ir(model, self.options.compress_to_fp16)
        ir = IrModel(ir.xml, ir.bin, source_onnx=artifact.data)
        ctx.log.append(f"convert-openvino: ONNX -> OpenVINO IR {ov.__version__.split('-')[0]} ({len(model.get_ordered_ops())} ops), "
                       f"weights {'fp16-compressed' if self.options.compress_to_fp16 else 'f32'}")
        return ir_artifact(ir)


PARITY_MAX_ITERATIONS = 3  # rounds of reverting ops to float the parity-aware quantization may spend (each re-ranks: ~30 s on PP-OCRv5 rec)

# Lines of an OpenVINO exception that say where in OpenVINO's sources a check failed, not what is
# wrong with the model: dropped so the message names the node, op and reason.
_OV_NOISE = ("Exception from ", "Check '", "FrontEnd API failed", "[ONNX Frontend]", "Model wasn't fully converted", "Failed operations detailed log",
             "Summary:", "RuntimeError:")


def openvino_error_summary(error: BaseException, limit: int = 500) -> str:
    """The part of an OpenVINO/NNCF exception a user can act on: the failed-ops summary, the
    node and the reason (OpenVINO puts source-file check locations first)."""
    lines = [re.sub(r"Check '.*?' failed at \S+:\s*", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith(_OV_NOISE) and not re.fullmatch(r"-- \S+ with a message:", line)]
    summary = [line for line in lines if line.startswith("-- Conversion is failed for")]
    rest = [line for line in lines if line not in summary]
    text = " / ".join([s.lstrip("- ") for s in summary] + rest[:3]) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class NncfOptions(PassOptions):
    preset: Literal["performance", "mixed"] = Field(default="performance", description="NNCF preset: symmetric (performance) or asymmetric (mixed) activations")
    # NNCF's default takes each activation's min/max over the calibration feeds; the histogram
    # estimator fits the range that minimises the quantization error instead, so one outlier feed
    # does not stretch the range for all. With asymmetric activations (mixed) and the full bias
    # correction it kept every validation page of RapidLayout over 0.98 (worst 0.989; the defaults
    # 0.917) at 0.79x the float IR's latency (bench/ov_int8_settings.py, 2026-12-05; converters/openvino_build.py MIXED_SETTINGS).
    activation_ranges: Literal["minmax", "histogram"] = Field(default="minmax", description="how activation ranges are estimated from the calibration feeds (NNCF's default min/max, or its histogram estimator)")
    transformer: bool = Field(default=False, description="NNCF model_type TRANSFORMER (keeps softmax/normalization inputs float): for Linear-heavy models")
    max_calibration_samples: int = Field(default=300, ge=1, le=100000, description="calibration feeds used at most (NNCF subset_size)")
    # The full bias correction re-runs the model per layer: slower to build, but on the digits CNN
    # (16x16, 128 calibration feeds) NNCF's fast one kept 96.4% top-1 agreement with fp32 (accuracy
    # 95.8% vs 98.6%, failing the 1-point gate) and the full one 99.7% (98.3%). It compiles each
    # layer's subgraph alone, so its cost grows with depth: 74 s of DenseNet-121's 118 s build
    # (2026-12-05). `--quantize auto` therefore starts with the fast one and builds the full one only
    # when the fast one fails a gate (converters/openvino_build.py).
    fast_bias_correction: bool = Field(default=False, description="NNCF's fast bias correction instead of the full one (faster build, less accurate on small nets)")
    compress_to_fp16: bool = Field(default=True, description="store the float weights left (biases, float layers) as fp16")
    min_cosine: float | None = Field(default=None, gt=0.0, le=1.0, description=(
        "parity-aware: nncf.quantize_with_accuracy_control on the validation feeds in ctx.validation (feeds, the original model's "
        "outputs), keeping layers float until every feed's worst output cosine with the original is at least this (None: off)"))
    max_accuracy_drop: float | None = Field(default=None, ge=0.0, le=100.0, description=(
        "accuracy-aware: nncf.quantize_with_accuracy_control on the labelled validation feeds in ctx.validation, keeping layers "
        "float until top-1 accuracy drops at most this many points (None: plain nncf.quantize)"))


@register_pass
class QuantizeOpenVino(Pass):
    name = "quantize-openvino"
    description = "int8 post-training quantization of an OpenVINO IR with nncf.quantize on the calibration data"
    Options = NncfOptions
    input_format = "openvino"

    def run(self, artifact: Artifact, ctx: PassContext) -> Artifact:
        try:
            import nncf
        except ImportError as e:
            raise ToolUnavailableError("nncf is not installed: pip install 'edgeops[openvino-build]' (int8 for OpenVINO profiles)") from e
        if ctx.calibration is None:
            raise CalibrationMissingError(
                "int8 quantization with NNCF needs calibration data: pass --calibration DATA (.npy, .npz keyed by input name, or an image folder; "
                "100-500 representative samples), or choose --quantize none"
            )
        model = read_ir(artifact.module)
        specs = [TensorSpec(name=p.get_any_name(), dtype="float32", shape=[d.get_length() if d.is_static else f"dim{i}" for i, d in enumerate(p.get_partial_shape())])
                 for p in model.inputs]
        feeds = ctx.calibration.batches(specs, limit=self.options.max_calibration_samples)
        kwargs = {
            "preset": nncf.QuantizationPreset.PERFORMANCE if self.options.preset == "performance" else nncf.QuantizationPreset.MIXED,
            "subset_size": len(feeds),
            "fast_bias_correction": self.options.fast_bias_correction,
            "target_device": nncf.TargetDevice.CPU,
        }
        if self.options.transformer:
            kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        advanced = None
        if self.options.activation_ranges == "histogram":
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
            from nncf.quantization.range_estimator import RangeEstimatorParametersSet

            advanced = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.HISTOGRAM)
        if self.options.min_cosine is not None and ctx.validation is not None:
            val_feeds, references = ctx.validation
            try:
                # the fp32 IR scores ~1.0 against the original: a drop of 1 - min_cosine leaves the worst feed at min_cosine
                # bounded: NNCF's default is to revert ops until the target is met, which on PP-OCRv5 rec
                # (drop stuck at 0.044 against 0.016) re-ranked dozens of times for over 10 minutes
                from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

                quantized = nncf.quantize_with_accuracy_control(
                    model, nncf.Dataset(feeds), nncf.Dataset(list(zip(val_feeds, references))), validation_fn=worst_cosine,
                    max_drop=1.0 - self.options.min_cosine, drop_type=nncf.DropType.ABSOLUTE,
                    advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(max_num_iterations=PARITY_MAX_ITERATIONS),
                    advanced_quantization_parameters=advanced, **kwargs)
            except Exception as e:  # NNCF and OpenVINO raise their own (and plain Runtime) error types
                raise Int8QuantizationError(f"NNCF's parity-aware quantization cannot quantize the model: {openvino_error_summary(e)}") from e
            how = f"parity-aware (quantize_with_accuracy_control, worst output cosine >= {self.options.min_cosine} on {len(val_feeds)} validation feeds)"
        elif self.options.max_accuracy_drop is not None and ctx.validation is not None:
            val_feeds, val_labels = ctx.validation
            try:
                quantized = nncf.quantize_with_accuracy_control(
                    model, nncf.Dataset(feeds), nncf.Dataset(list(zip(val_feeds, val_labels))), validation_fn=top1_accuracy,
                    max_drop=self.options.max_accuracy_drop / 100.0, drop_type=nncf.DropType.ABSOLUTE, advanced_quantization_parameters=advanced, **kwargs)
            except Exception as e:  # NNCF and OpenVINO raise their own (and plain Runtime) error types
                raise Int8QuantizationError(f"NNCF's accuracy-aware quantization cannot quantize the model: {openvino_error_summary(e)}. "
                                            "Build it with --quantize none (float IR), or without labels in the validation data") from e
            how = f"accuracy-aware (quantize_with_accuracy_control, top-1 drop <= {self.options.max_accuracy_drop} pt on {len(val_feeds)} labelled validation feeds)"
        else:
            plain = {**kwargs, "advanced_parameters": advanced}
            quantized, how = self._quantize(nncf, model, feeds, plain, ctx)
            kwargs["fast_bias_correction"] = plain["fast_bias_correction"]  # the fast one, where the full one failed
        ir = save_ir(quantized, self.options.compress_to_fp16)
        ir = IrModel(ir.xml, ir.bin, source_onnx=artifact.module.source_onnx,
                     nncf={"fast_bias_correction": bool(kwargs["fast_bias_correction"]), "transformer": self.options.transformer,
                           "preset": self.options.preset, "activation_ranges": self.options.activation_ranges})
        ctx.log.append(f"quantize-openvino: NNCF {nncf.__version__} int8 ({self.options.preset} preset{', transformer' if self.options.transformer else ''}, "
                       f"{self.options.activation_ranges} activation ranges, {how}) "
                       f"on {len(feeds)} calibration feeds")
        return ir_artifact(ir)

    @staticmethod
    def _quantize(nncf, model, feeds, kwargs: dict, ctx: PassContext):
        """nncf.quantize; when the full bias correction fails (it compiles each layer's subgraph
        alone, which OpenVINO refuses for an LSTMSequence whose weights are not constants, e.g.
        silero-vad), once more with the fast one; Int8QuantizationError if that fails too."""
        bias = "fast" if kwargs.get("fast_bias_correction") else "full"
        try:
            return nncf.quantize(model, nncf.Dataset(feeds), **kwargs), f"nncf.quantize, {bias} bias correction"
        except Exception as e:  # NNCF and OpenVINO raise their own (and plain Runtime) error types
            first = openvino_error_summary(e)
            if kwargs.get("fast_bias_correction"):
                raise Int8QuantizationError(f"NNCF cannot quantize the model: {first}. Build it with --quantize none (float IR), or for an onnxruntime profile") from e
        ctx.log.append(f"quantize-openvino: NNCF's full bias correction failed ({first}); retried with the fast one")
        kwargs["fast_bias_correction"] = True
        try:
            return nncf.quantize(model, nncf.Dataset(feeds), **kwargs), "nncf.quantize, fast bias correction (the full one failed)"
        except Exception as e:
            raise Int8QuantizationError(f"NNCF cannot quantize the model: {openvino_error_summary(e)} (the full bias correction failed first: {first}). "
                                        "Build it with --quantize none (float IR), or for an onnxruntime profile") from e


def top1_accuracy(compiled_model, items) -> tuple[float, list[float]]:
    """NNCF's validation_fn: top-1 accuracy of a compiled classifier over (feed, labels) items,
    with each item's own accuracy so NNCF can rank the layers it restores to float."""
    per_item = []
    for feed, labels in items:
        logits = np.asarray(compiled_model(feed)[0])
        per_item.append(float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels).reshape(-1))))
    return (float(np.mean(per_item)) if per_item else 0.0), per_item


def worst_cosine(compiled_model, items) -> tuple[float, list[float]]:
    """NNCF's validation_fn for parity: over (feed, the original model's outputs in graph order)
    items, each item's worst output cosine with the original, and the worst of all (the parity
    gate's min_cosine looks at the worst feed, so NNCF restores layers until that one passes)."""
    per_item = []
    for feed, references in items:
        outputs = compiled_model(feed)
        worst = 1.0
        for i, ref in enumerate(references):
            a, b = np.asarray(ref, np.float64).ravel(), np.asarray(outputs[i], np.float64).ravel()
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            worst = min(worst, 1.0 if na == nb == 0 else float(a @ b / (na * nb)) if na and nb else 0.0)
        per_item.append(worst)
    return (min(per_item) if per_item else 0.0), per_item


class OpenVinoRunner:
    """An OpenVINO compiled model on the build host's CPU, at the device's inference precision
    (``f32`` or ``bf16``) and thread count; same ``inputs``/``outputs``/``run`` as the other runners."""

    def __init__(self, ir: IrModel, threads: int = 1, precision: str = "f32", hint: str = "LATENCY", label: str = "model"):
        ov = _openvino()
        try:
            model = read_ir(ir)
            self.compiled = ov.Core().compile_model(model, "CPU", compile_config(precision, threads, hint))
        except Exception as e:
            raise ModelLoadError(f"{label}: OpenVINO cannot load the model: {openvino_error_summary(e)}") from e
        self.precision = precision
        self.request = self.compiled.create_infer_request()
        self.inputs = [port_spec(p) for p in self.compiled.inputs]
        self.outputs = [port_spec(p) for p in self.compiled.outputs]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.request.infer({k: np.ascontiguousarray(v) for k, v in feed.items()})
        # results are views into the request's tensors: copied, the next call overwrites them
        return {spec.name: np.array(result[port]) for spec, port in zip(self.outputs, self.compiled.outputs)}


def compile_config(precision: str, threads: int, hint: str = "LATENCY") -> dict:
    """The CPU plugin properties the packager validates with and the agent serves with."""
    return {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": hint, "NUM_STREAMS": 1}


_OV_TYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "i64": "int64", "i32": "int32", "i8": "int8", "u8": "uint8", "boolean": "bool", "i16": "int16"}


def port_spec(port) -> TensorSpec:
    """A compiled OpenVINO model's input or output port as a TensorSpec (dynamic dims named ``dimN``)."""
    shape = [d.get_length() if d.is_static else f"dim{i}" for i, d in enumerate(port.get_partial_shape())]
    return TensorSpec(name=port.get_any_name(), dtype=_OV_TYPES.get(port.get_element_type().get_type_name(), port.get_element_type().get_type_name()), shape=shape)
