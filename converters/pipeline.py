"""The packager's pipeline: source model -> passes -> validation -> golden vectors -> bundle.

:func:`build` is what `edgeops build` runs. The passes are picked per profile (artifact
format, quantization preferences, constraints) and per model (conv net or Linear-heavy, see
:mod:`edgeops.converters.choose`). The result is deterministic: the same model, data, options
and toolchain give a byte-identical bundle (host latency, which varies run to run, is reported
on stdout and in ``--json`` but kept out of the bundle).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeops.bundle import GOLDEN_NAME, REPORT_NAME, Manifest, ManifestBudgets, Provenance, TensorSpec, describe_files, write_bundle
from edgeops.converters import checks
from edgeops.converters.choose import Choice, choose_scheme
from edgeops.converters.data import Dataset, ImageOptions, describe_inputs, generated_dataset, load_dataset
from edgeops.converters.errors import CalibrationMissingError, NonFiniteOutputError
from edgeops.converters.external import artifact_members
from edgeops.converters.graph import ModelKind, classify_onnx, classify_torch, graph_inputs, set_input_shapes
from edgeops.converters.intake import prepare_onnx
from edgeops.converters.passes import Artifact, PassContext, create_pass
from edgeops.converters.runtime import make_runner, measure_latency
from edgeops.converters.shapes import check_fixed_shapes_load, fix_dims_from_data
from edgeops.converters.source import SourceModel, load_source
from edgeops.converters.validate import GateLimits, compare_models, evaluate_gates, format_gate_failures, is_classifier, output_pairs, same_nonfinite
from edgeops.errors import ConfigError, DataError, GateFailedError, ModelLoadError, first_problem
from edgeops.golden import GoldenVectors, Tolerance
from edgeops.profiles import VNNI_FLAGS, host_cpu_flags, load_profile

GOLDEN_CASES = 3
MAX_VALIDATION_FEEDS = 2000
REPORT_FORMAT = 1


class BuildOptions(BaseModel):
    """Everything `edgeops build` takes; validated before any work starts."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="model file or module:factory")
    profile: str = Field(description="profile name or path to a profile .toml")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")
    release: int = Field(default=1, ge=0)
    output: str
    calibration: str | None = None
    validation: str | None = None
    quantize: str = Field(default="auto", pattern=r"^(auto|static-int8|dynamic-int8|full-int8|fp16|none)$")
    calibration_method: str | None = Field(default=None, pattern=r"^(minmax|entropy|percentile)$")
    input_shapes: dict[str, list[int]] = Field(default_factory=dict)
    max_accuracy_drop: float | None = Field(default=None, ge=0)
    max_size_mb: float | None = Field(default=None, gt=0)
    min_agreement: float | None = Field(default=None, ge=0, le=1)
    min_cosine: float | None = Field(default=None, ge=-1, le=1)
    allow_gate_failures: bool = False
    image: ImageOptions = Field(default_factory=ImageOptions)
    latency_runs: int = Field(default=200, ge=1)

    @classmethod
    def parse(cls, **kwargs) -> "BuildOptions":
        """Validate options; errors name the option."""
        try:
            return cls(**kwargs)
        except ValidationError as e:
            problem = first_problem(e)
            raise ConfigError(f"option '{problem.loc}': {problem.msg} (got {problem.input!r})") from e


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """'name=1,3,32,32' -> ('name', [1, 3, 32, 32])."""
    m = re.fullmatch(r"\s*([^=\s]+)\s*=\s*(\d+(?:\s*,\s*\d+)*)\s*", text)
    if not m:
        raise ConfigError(f"--input-shape '{text}': expected NAME=D0,D1,... with positive integers, e.g. input=1,3,224,224")
    dims = [int(d) for d in m.group(2).split(",")]
    if any(d <= 0 for d in dims):
        raise ConfigError(f"--input-shape '{text}': dims must be positive")
    return m.group(1), dims


@dataclass
class BuildResult:
    """What a build produced: the bundle path, manifest, report and (not in the bundle) host latency."""

    path: Path | None
    manifest: Manifest
    report: dict
    host_latency: dict
    gates_passed: bool
    warnings: list[str] = field(default_factory=list)


StepFn = Callable[[str], contextlib.AbstractContextManager]


def build(options: BuildOptions, step: StepFn | None = None) -> BuildResult:
    """Run the whole build. ``step(text)`` is a context manager the CLI uses for progress."""
    step = step or (lambda text: contextlib.nullcontext())
    with step("loading profile and model"):
        profile = load_profile(options.profile)
        source = load_source(options.model)
        checks.check_input_format(source.family, profile)
    ctx = PassContext(profile=profile, step=step)
    ctx.warnings.extend(source.notes)
    target = profile.artifact_format
    runtime_name = profile.runtime.name  # an OpenVINO profile may ship an onnxruntime candidate (openvino_build.finish)
    if target == "onnx":
        reference, built, choice, kind, calib = _onnx_path(source, profile, options, ctx, step)
    elif target == "openvino":
        from edgeops.converters.openvino_build import openvino_path

        reference, built, choice, kind, calib = openvino_path(source, profile, options, ctx, step)
    else:
        reference, built, choice, kind, calib = _tflite_path(source, profile, options, ctx, step)
    # The reference runs where the original runs: an OpenVINO build is checked against the ONNX model in onnxruntime.
    ref_format = "onnx" if target == "openvino" else target
    precision = None  # OpenVINO's inference precision, decided once the validation data is loaded

    with step("validating against the original"):
        threads = profile.runtime.threads
        ref_runner = make_runner(ref_format, reference.data, threads=1, label="original model")
        _check_tensor_io(ref_runner, _display_name(source))
        emulate = _needs_vnni_emulation(profile, choice)
        if emulate:
            from edgeops.converters.runtime import OnnxRunner

            ctx.warn(
                "this host has no VNNI, the profile's device has: onnxruntime's u8 x s8 kernels saturate without VNNI, so the built model "
                "was validated with its QDQ graph unfused (exact integer semantics, as a VNNI CPU computes them); host latency of the built model "
                "uses non-VNNI kernels"
            )
            built_runner = OnnxRunner(built.data, threads=1, label="built model", optimize=False)
        elif target != "openvino":
            built_runner = make_runner(target, built.data, threads=1, label="built model")
        if options.validation:
            validation = load_dataset(options.validation, ref_runner.inputs, "validation", options.image)
        else:
            validation = generated_dataset(ref_runner.inputs, label=_display_name(source))
            ctx.warn("no --validation data: compared on generated random inputs, so accuracy is NOT measured; pass --validation DATA (.npz with 'labels' for accuracy)")
        feeds = validation.batches(ref_runner.inputs, limit=MAX_VALIDATION_FEEDS)
        labels = validation.label_batches(ref_runner.inputs, limit=MAX_VALIDATION_FEEDS)
        if target == "openvino":
            from edgeops.converters.openvino_build import finish
            from edgeops.converters.passes.openvino import OpenVinoRunner

            classifier = is_classifier(ref_runner.outputs)
            limits = GateLimits.from_profile(profile, options.max_accuracy_drop, options.max_size_mb, options.min_agreement, options.min_cosine)
            # the precision, and under auto the candidate (int8 / float IR) measured fastest among those passing the gates
            built, choice, precision, why = finish(profile, options, built, choice, ref_runner, feeds, labels, classifier, limits, ctx)
            if built.format == "onnx":  # an onnxruntime candidate (int8 or float) measured fastest: an onnxruntime bundle
                target, runtime_name = "onnx", "onnxruntime"
                built_runner = make_runner("onnx", built.data, threads=1, label="built model")
            else:
                ctx.report["inference_precision"] = {"precision": precision, "reason": why}
                ctx.log.append(f"openvino: inference precision {precision}: {why}")
                built_runner = OpenVinoRunner(built.module, threads=1, precision=precision, hint=profile.runtime.openvino_hint, label="built model")
        classifier = is_classifier(built_runner.outputs)
        _trial_run(ref_runner, feeds, "validation", validation)
        try:
            metrics, built_outputs = compare_models(ref_runner, built_runner, feeds, labels, classifier)
        except ValueError as e:
            raise ModelLoadError(f"built model does not match the original: {e}") from e
        if labels is not None and not classifier:
            ctx.warn("validation data has 'labels' but the model is not a classifier (one [N, classes] output): accuracy not computed")

    with step("measuring host latency"):
        latency = {
            "threads": threads,
            "original": measure_latency(make_runner(ref_format, reference.data, threads=threads), feeds[0], runs=options.latency_runs),
            "built": measure_latency(_host_runner(target, built, threads, precision, profile), _first_feed(built_runner, feeds[0]), runs=options.latency_runs),
            "note": "measured on the build host, not on the device; kept out of the bundle so builds are reproducible",
            **({"candidates": ctx.measurements} if getattr(ctx, "measurements", None) else {}),
        }

    golden = _golden(feeds, ref_runner, built_runner, built_outputs, metrics, ctx, _data_label(options.validation), accelerator=_device_accelerator(profile, target))
    golden_bytes = golden.to_json_bytes()
    artifact_name = "model/model.xml" if target == "openvino" else f"model/model.{target}"
    # An ONNX model that came with external data goes into the bundle with its weights beside it.
    if target == "openvino":
        model_members = built.module.members(artifact_name)  # model.xml and model.bin
    else:
        model_members = artifact_members(built.data, artifact_name, external=source.external_data and target == "onnx")
    built_size = built.module.size if target == "openvino" else len(built.data)
    if len(model_members) > 1 and target == "onnx":
        ctx.log.append(f"external-data: weights in {', '.join(n for n in model_members if n != artifact_name)} beside {artifact_name}, as the source model had them")
    limits = GateLimits.from_profile(profile, options.max_accuracy_drop, options.max_size_mb, options.min_agreement, options.min_cosine)
    # The size gate counts every member but the report (whose own size cannot depend on the gate).
    gates = evaluate_gates(metrics, built_size + len(golden_bytes), limits)
    passed = all(g["passed"] for g in gates)
    report = {
        "format": REPORT_FORMAT,
        "status": "passed" if passed else "gates_failed",
        "model": {"source": _display_name(source), "source_format": source.format, "task": "classifier" if classifier else "generic", "kind": kind.kind},
        "profile": profile.name,
        "runtime": {"name": runtime_name, "host_providers": {"onnx": ["CPUExecutionProvider"], "openvino": ["CPU"]}.get(target, ["XNNPACK"]), "device_providers": _device_providers(profile, target)},
        "quantization": {"requested": options.quantize, "scheme": choice.scheme, "reason": choice.reason, "model_analysis": kind.describe(),
                         **({"attempts": ctx.report["quantization_attempts"]} if "quantization_attempts" in ctx.report else {}),
                         **({"int8_layout": ctx.report["int8_layout"]} if "int8_layout" in ctx.report else {}),
                         **({"speed_check": ctx.report["speed_check"]} if "speed_check" in ctx.report else {})},
        "passes": ctx.log,
        "conversions": ctx.report,
        "warnings": ctx.warnings,
        "data": {
            "validation": _data_doc(validation, len(feeds)),
            "calibration": _data_doc(calib, None) if calib else None,
        },
        "metrics": metrics,
        "size": {
            "original_bytes": len(reference.data),
            "built_bytes": built_size,
            "ratio": round(built_size / max(len(reference.data), 1), 4),
        },
        "gates": gates,
        "accuracy_measured": labels is not None and classifier,
    }
    if not passed and not options.allow_gate_failures:
        raise GateFailedError(
            "build gates failed (no bundle written; pass --allow-gate-failures to write it anyway):\n" + format_gate_failures(gates),
            failures=[g for g in gates if not g["passed"]],
        )
    if not passed:
        ctx.warn("gates failed and --allow-gate-failures was given: the bundle is written with status 'gates_failed'")
        report["warnings"] = ctx.warnings
    monitoring = _drift_reference(options, validation, calib, feeds, built_outputs, ref_runner, built_runner, classifier, ctx)
    report_bytes = _json_bytes(report)
    payload = {**model_members, GOLDEN_NAME: golden_bytes, REPORT_NAME: report_bytes}
    manifest = Manifest(
        name=options.name, version=options.version, release=options.release, profile=profile.name, profile_sha256=profile.sha256,
        runtime=runtime_name, artifact=artifact_name, quantization=choice.scheme,
        providers=_device_providers(profile, target),
        runtime_options=_runtime_options(profile, precision) if target == "openvino" else {},
        task="classifier" if classifier else "generic", inputs=built_runner.inputs, outputs=built_runner.outputs,
        budgets=ManifestBudgets(latency_p95_ms=profile.budgets.latency_p95_ms, max_memory_mb=profile.budgets.max_memory_mb),
        files=describe_files(payload),
        provenance=Provenance(
            source_model_sha256=source.sha256, source_format=source.format,
            calibration_sha256=calib.sha256 if calib else None,
            validation_sha256=validation.sha256 or None,
            toolchain=_toolchain(target, source),
            git_commit=_git_commit(source),
            options=_provenance_options(options, choice, validation, calib),
        ),
        monitoring=monitoring,
    )
    with step("writing bundle"):
        path = write_bundle(options.output, manifest, payload)
    return BuildResult(path, manifest, report, latency, passed, list(ctx.warnings))


# --- the ONNX path ---------------------------------------------------------------------------

def onnx_front(source: SourceModel, profile, options: BuildOptions, ctx: PassContext, step: StepFn):
    """What every path that builds from ONNX (onnxruntime, OpenVINO) does before it picks a scheme:
    the source as an ONNX reference (a PyTorch model exported), the ONNX intake, the profile's opset,
    operator and static-shape checks, and the model's kind.

    Returns ``(reference, prepared, model, specs, kind, label)``."""
    runtime = profile.runtime.name
    if source.family == "tflite":
        raise ConfigError(f"profile '{profile.name}' runs {runtime}; a .tflite model cannot be converted to ONNX here. Give the ONNX or PyTorch model, or use a LiteRT profile")
    kind = None
    if source.family == "pytorch":
        torch_art = _torch_artifact(source, options)
        kind = classify_torch(torch_art.module if not _is_exported_program(torch_art.module) else torch_art.module.module())
        with step("exporting PyTorch -> ONNX"):
            opset = min(max(18, profile.constraints.min_opset), profile.constraints.max_opset)
            reference = create_pass("export-onnx", opset=opset)(torch_art, ctx)
        label = f"{source.reference} (exported)"
    else:
        reference = Artifact("onnx", data=source.data)
        label = str(source.path)
    reference, prepared, model = _onnx_intake(reference, source, profile, options, ctx, step, label)
    checks.check_onnx_opset(model, profile, label)
    checks.check_onnx_ops(model, profile, label)
    specs = graph_inputs(model)
    checks.check_static_shapes(specs, profile, label)
    if kind is None:
        kind = classify_onnx(model)
    return reference, prepared, model, specs, kind, label


def _onnx_path(source: SourceModel, profile, options: BuildOptions, ctx: PassContext, step: StepFn):
    import onnx

    reference, prepared, model, specs, kind, label = onnx_front(source, profile, options, ctx, step)
    choice = _choice(options, kind, profile)
    if choice.scheme == "full-int8":
        raise ConfigError(f"--quantize full-int8 is the fully integer TFLite scheme for LiteRT / Edge TPU profiles; profile '{profile.name}' runs onnxruntime: use static-int8")
    calib = _load_calibration(options, choice, specs)
    ctx.calibration = calib
    if calib is not None:
        from edgeops.converters.runtime import OnnxRunner

        _trial_run(OnnxRunner(reference.data, threads=1, label="original model"), calib.batches(specs, limit=1), "calibration", calib)
    with step("pre-processing (shape inference, graph optimization)"):
        # onnxruntime's optimizer fuses MatMul+Add into Gemm, which quantize_dynamic leaves float:
        # for dynamic int8 only shape inference runs, the optimizer runs at session start on the device.
        built = create_pass("preprocess", optimize=choice.scheme != "dynamic-int8")(prepared, ctx)
    q = profile.quantization
    if choice.scheme == "static-int8":
        reduce_range = _needs_reduce_range(profile)
        if reduce_range:
            ctx.log.append(f"quantize-static: reduce_range on: profile '{profile.name}' is x86-64 without VNNI, where u8 x s8 products saturate at 8-bit weights")
        with step("graph fusion (global pooling)"):
            built = create_pass("fuse-graph", global_pool=True)(built, ctx)
        if options.quantize == "auto":
            # auto: the first of a bounded list of int8 attempts that passes the gates, else float (quant_search.py)
            built, choice = _auto_static_int8(built, reference, profile, options, ctx, step, choice, reduce_range)
        else:
            with step(f"static int8 quantization ({options.calibration_method or q.calibration_method} calibration)"):
                # Shallow convs stay float only where that was measured to be faster (x86-64 MLAS kernels).
                built = create_pass("quantize-static", activation_type=q.activation_type, weight_type=q.weight_type, per_channel=q.per_channel,
                                    calibration_method=options.calibration_method or q.calibration_method, reduce_range=reduce_range,
                                    float_shallow_convs=profile.device.arch == "x86_64")(built, ctx)
    elif choice.scheme == "dynamic-int8":
        with step("graph fusion (multi-head attention)"):
            built = create_pass("fuse-graph", attention=True)(built, ctx)
        float_built = built
        with step("dynamic int8 quantization"):
            # Per-tensor: onnxruntime's per-channel dynamic MatMul lost accuracy in our measurements
            # (digits transformer: 91.9% per-channel vs 93.0% per-tensor, fp32 93.9%).
            built = create_pass("quantize-dynamic", weight_type=q.weight_type, per_channel=False)(built, ctx)
        if options.quantize == "auto":
            # dynamic int8 quantizes activations at run time: on small sequences that costs more than it saves
            built, choice = _int8_if_not_slower(built, float_built, profile, options, _timing_feed(options, specs), ctx, step, choice)
    elif choice.scheme == "fp16":
        with step("float16 conversion"):
            built = create_pass("fp16")(built, ctx)
    checks.check_onnx_ops(onnx.load_model_from_string(built.data), profile, "built model")
    return reference, built, choice, kind, calib


def _auto_static_int8(built: Artifact, reference: Artifact, profile, options: BuildOptions, ctx: PassContext, step: StepFn, choice: Choice, reduce_range: bool):
    """(artifact, choice) under --quantize auto: see :mod:`edgeops.converters.quant_search`."""
    import onnx

    from edgeops.converters import quant_search
    from edgeops.converters.runtime import OnnxRunner
    from edgeops.converters.speed_check import missing_cpu_features

    q = profile.quantization
    ref_runner = OnnxRunner(reference.data, threads=1, label="original model")
    specs = ref_runner.inputs
    data = load_dataset(options.validation, specs, "validation", options.image) if options.validation else generated_dataset(specs, label="auto search")
    feeds = data.batches(specs, limit=quant_search.SEARCH_FEEDS)
    _trial_run(ref_runner, feeds, "validation", data)  # data the model cannot take: a DataError here, as in the final validation
    labels = data.label_batches(specs, limit=quant_search.SEARCH_FEEDS)
    limits = GateLimits.from_profile(profile, options.max_accuracy_drop, options.max_size_mb, options.min_agreement, options.min_cosine)
    validate = quant_search.validator(reference.data, feeds, labels, limits, _needs_vnni_emulation(profile, choice))

    float_model = onnx.load_model_from_string(built.data)
    # Histogram calibration (percentile, entropy) and qdq_loss_debug hold every activation of every
    # feed in memory: their feeds are capped so that stays within quant_search.HISTOGRAM_BUDGET_BYTES.
    histogram_cap = quant_search.histogram_feeds(float_model, 256)
    ctx.log.append(f"auto: percentile/entropy calibration on at most {max(histogram_cap, 1)} feed(s), qdq_loss_debug on {min(quant_search.DEBUG_FEEDS, histogram_cap // 4)} "
                   f"(about {quant_search.activation_bytes(float_model) / 1e6:.0f} MB of activations per feed, {quant_search.HISTOGRAM_BUDGET_BYTES / 2**30:.0f} GiB budget)")

    def quantize(spec, nodes, cache):
        limit = 256 if spec.method == "minmax" else max(histogram_cap, 1)
        with step(f"static int8 quantization ({spec.label()})"):
            return create_pass("quantize-static", activation_type=q.activation_type, weight_type=q.weight_type, per_channel=spec.per_channel,
                               calibration_method=spec.method, reduce_range=reduce_range, float_shallow_convs=profile.device.arch == "x86_64",
                               nodes_to_exclude=nodes, calibration_cache=cache, max_calibration_samples=limit,
                               op_types=sorted(quant_search.WEIGHTED_OPS) if spec.weighted_only else [])(built, ctx)

    def rank(artifact):  # the nodes the int8 model distorts most, by onnxruntime's qdq_loss_debug
        debug_feeds = min(quant_search.DEBUG_FEEDS, histogram_cap // 4)  # two models, the int8 one with ~2x the tensors
        if debug_feeds < 1:
            return []
        with step("ranking int8 activation errors (qdq_loss_debug)"):
            return quant_search.activation_error_nodes(built.data, artifact.data, feeds[:debug_feeds])

    # the weighted-only layout is worth building only where the two can be timed (a host with the profile's CPU features)
    result = quant_search.search(built, quantize, validate, options.calibration_method or q.calibration_method, q.per_channel,
                                 float_model, rank_nodes=rank, alternative=not missing_cpu_features(profile))
    ctx.report["quantization_attempts"] = [a.doc() for a in result.attempts]
    ctx.log.extend(a.line() for a in result.attempts)
    if result.passed:
        kept = result.kept
        if kept.attempt > 1:
            choice = Choice(choice.scheme, f"{choice.reason}; the profile's int8 settings failed a parity gate, attempt {kept.attempt} "
                            f"({kept.tried}) passes every gate")
        int8 = result.artifact
        if result.alternative is not None:
            int8, choice = _faster_int8_layout(int8, result.alternative, profile, options, feeds[0], ctx, step, choice)
        return _int8_if_not_slower(int8, built, profile, options, feeds[0], ctx, step, choice)
    tried = "; ".join(f"{a.tried}: {a.worst_gate}" for a in result.attempts)
    ctx.log.append("auto: no int8 attempt passed the gates; float32 model kept (onnxruntime CPU runs float32)")
    return built, Choice("none", f"{choice.reason}; but no static int8 attempt passed the parity gates ({tried}), so the float32 model ships")


def _timing_feed(options: BuildOptions, specs) -> dict:
    """One feed to time candidates on: the first validation feed, else a generated one."""
    data = load_dataset(options.validation, specs, "validation", options.image) if options.validation else generated_dataset(specs, label="timing")
    return data.batches(specs, limit=1)[0]


def _faster_int8_layout(full: Artifact, weighted_only: Artifact, profile, options: BuildOptions, feed, ctx: PassContext, step: StepFn, choice: Choice):
    """The full-graph int8 artifact, or the weighted-only one where it measured faster here (:func:`speed_check.compare_layouts`)."""
    from edgeops.converters import speed_check

    with step("timing full-graph int8 against int8 on Conv/MatMul/Gemm only (auto)"):
        verdict = speed_check.compare_layouts(full.data, weighted_only.data, profile, feed, options.latency_runs)
    # figure-free in the report (the bundle must be reproducible); the figures and the reason go to the build output
    ctx.log.append("auto int8 layout: " + ("not measured: full-graph int8 kept" if not verdict.measured
                                           else ("int8 on Conv/MatMul/Gemm only ships" if verdict.use_alternative else "full-graph int8 kept")
                                           + f" (the two timed on this host, {speed_check.ALTERNATIVE_MARGIN}x margin; figures in the build output)"))
    if verdict.figures:
        ctx.measurements = {**(getattr(ctx, "measurements", None) or {}), "int8_layout": {**verdict.figures, "reason": verdict.reason}}
    ctx.report["int8_layout"] = {"measured": verdict.measured, "shipped": "weighted-only" if verdict.use_alternative else "full-graph",
                                 "rule": f"int8 on Conv/MatMul/Gemm only ships when it measures under 1/{speed_check.ALTERNATIVE_MARGIN} of the full-graph int8 latency "
                                         "on a host with the profile's CPU features; both passed every gate"}
    if not verdict.use_alternative:
        return full, choice
    return weighted_only, Choice(choice.scheme, f"{choice.reason}; int8 on Conv/MatMul/Gemm only (the ops between them float32) measured faster than full-graph int8 on this host")


def _int8_if_not_slower(int8: Artifact, float_built: Artifact, profile, options: BuildOptions, feed, ctx: PassContext, step: StepFn, choice: Choice):
    """The int8 artifact, unless it measured slower than float32 here (:mod:`edgeops.converters.speed_check`)."""
    from edgeops.converters import speed_check

    with step("timing int8 against float32 (auto)"):
        verdict = speed_check.check(int8.data, float_built.data, profile, feed, options.latency_runs)
    # figure-free in the report (the bundle must be reproducible); the figures go to the build output
    ctx.log.append("auto speed check: " + ("not measured: " + verdict.reason if not verdict.measured
                                           else ("int8 kept" if verdict.keep_int8 else "float32 ships") + f" (int8 vs float32 timed on this host, {speed_check.SLOWER_MARGIN}x margin; figures in the build output)"))
    if verdict.figures:
        ctx.measurements = {**(getattr(ctx, "measurements", None) or {}), "speed_check": verdict.figures, "reason": verdict.reason}
    # the report records the decision, not the figures (they vary run to run; the bundle must not)
    ctx.report["speed_check"] = {"measured": verdict.measured, "shipped": choice.scheme if verdict.keep_int8 else "none",
                                 "rule": f"float32 ships when int8 measures over {speed_check.SLOWER_MARGIN}x its latency on a host with the profile's CPU features"}
    if verdict.keep_int8:
        return int8, choice
    return float_built, Choice("none", f"{choice.reason}; but the int8 model measured slower than float32 on this host, so the float32 model ships")


def _u8s8(profile) -> bool:
    q = profile.quantization
    return profile.device.arch == "x86_64" and q.activation_type == "uint8" and q.weight_type == "int8"


def _needs_reduce_range(profile) -> bool:
    """x86-64 targets without VNNI need 7-bit weights for u8 x s8 (onnxruntime's documented remedy)."""
    return _u8s8(profile) and not (VNNI_FLAGS & set(profile.device.cpu_features))


def _needs_vnni_emulation(profile, choice: Choice) -> bool:
    """Validating a full-range u8 x s8 model on a host without VNNI would show saturation the device never has."""
    if profile.artifact_format != "onnx" or choice.scheme != "static-int8" or not _u8s8(profile) or _needs_reduce_range(profile):
        return False
    flags = host_cpu_flags()
    return bool(flags) and not (VNNI_FLAGS & flags) and ("avx2" in flags or "sse4_2" in flags)


# --- the LiteRT path -------------------------------------------------------------------------

def _tflite_path(source: SourceModel, profile, options: BuildOptions, ctx: PassContext, step: StepFn):
    from edgeops.converters.runtime import TfliteRunner

    if source.family == "onnx":
        reference, kind, choice = _onnx_to_tflite(source, profile, options, ctx, step)
    elif source.family == "pytorch":
        torch_art = _torch_artifact(source, options)
        module = torch_art.module.module() if _is_exported_program(torch_art.module) else torch_art.module
        kind = classify_torch(module)
        choice = _choice(options, kind, profile)
        _check_litert_scheme(choice, profile)
        with step("converting PyTorch -> TFLite (litert-torch)"):
            reference = create_pass("export-tflite")(torch_art, ctx)
    else:
        reference = Artifact("tflite", data=_prepared_tflite(source, ctx))
        kind = ModelKind("other", 0.0, 0.0, False)
        already = _tflite_is_quantized(source.data)
        if options.quantize == "auto" and already:
            choice = Choice("none", "the .tflite model is already quantized: packaged as is")
        else:
            choice = _choice(options, kind, profile)
            if options.quantize == "auto":
                choice = Choice(profile.quantization.scheme, f"float .tflite model: re-quantized with the profile's scheme {profile.quantization.scheme}")
            _check_litert_scheme(choice, profile)
    ref_runner = TfliteRunner(reference.data, label="original model")
    checks.check_static_shapes(ref_runner.inputs, profile, "tflite model")
    checks.check_tflite_ops(_tflite_ops(reference.data), profile, "tflite model")
    calib = _load_calibration(options, choice, ref_runner.inputs)
    ctx.calibration = calib
    built = reference
    if choice.scheme in ("dynamic-int8", "static-int8", "full-int8"):
        with step(f"{choice.scheme} quantization (ai-edge-quantizer)"):
            built = create_pass("quantize-tflite", scheme=choice.scheme)(reference, ctx)
        if not _tflite_is_quantized(built.data):
            # the recipe found no op it quantizes: say so rather than name a scheme the model does not have
            ops = sorted({op for _, op in _tflite_ops(reference.data)})
            ctx.warn(f"{choice.scheme} quantization changed nothing in this model (ai-edge-quantizer quantizes none of its ops: {', '.join(ops)}); the bundle is float")
            choice = Choice("none", f"{choice.reason}; but ai-edge-quantizer's recipe quantized no tensor of this model: packaged float")
            built = reference
        elif options.quantize == "auto" and choice.scheme != "full-int8":  # the Edge TPU runs integer models only
            from edgeops.converters.litert_check import int8_or_float

            data = load_dataset(options.validation, ref_runner.inputs, "validation", options.image) if options.validation else generated_dataset(ref_runner.inputs, label="auto check")
            limits = GateLimits.from_profile(profile, options.max_accuracy_drop, options.max_size_mb, options.min_agreement, options.min_cosine)
            with step(f"checking the {choice.scheme} model's parity (auto)"):
                built, choice = int8_or_float(reference, built, choice, data, limits, ctx)
        if choice.scheme == "full-int8" and "EdgeTpuDelegate" in profile.runtime.providers:
            ctx.warn("full-int8 model built; compile it for the Edge TPU with edgetpu_compiler on a supported host (not run here)")
    else:
        ctx.log.append("tflite: packaged without quantization")
    return reference, built, choice, kind, calib


def _prepared_tflite(source: SourceModel, ctx: PassContext) -> bytes:
    """The user's .tflite as the packager and the agent run it (converters/tflite_intake.py: operator
    codes, float16 weights, a signature), each repair recorded in the report and the build log."""
    from edgeops.converters.tflite_intake import prepare_tflite

    data, done = prepare_tflite(source.data)
    if done:
        ctx.report["tflite_intake"] = {**done, "bytes_as_given": len(source.data), "bytes_prepared": len(data)}
        for what, detail in done.items():
            ctx.log.append(f"tflite intake: {what}: " + (detail if isinstance(detail, str) else f"wrote '{detail['written']}' with inputs {detail['inputs']} and outputs {detail['outputs']}"))
    return data


def _onnx_intake(reference: Artifact, source: SourceModel, profile, options: BuildOptions, ctx: PassContext, step: StepFn, label: str):
    """(reference, prepared, ModelProto): input shapes fixed (--input-shape, then the data), and for a
    user's ONNX file the intake (operators, opset conversion, normalization; see intake.py)."""
    import onnx

    model = onnx.load_model_from_string(reference.data)
    if options.input_shapes:
        try:
            set_input_shapes(model, options.input_shapes)
        except KeyError as e:
            raise ConfigError(f"--input-shape names input {e}, the model's inputs are {', '.join(s.name for s in graph_inputs(model))}") from e
        except ValueError as e:
            raise ConfigError(f"--input-shape: {e}") from e
        check_fixed_shapes_load(model, reference.data, options.input_shapes)
        reference = Artifact("onnx", data=model.SerializeToString())
    shape_notes = fix_dims_from_data(model, graph_inputs(model), _given_datasets(options, graph_inputs(model)), fix_batch=profile.constraints.static_shapes)
    if shape_notes:
        ctx.log.extend(shape_notes)
        reference = Artifact("onnx", data=model.SerializeToString())
    prepared = reference
    if source.family == "onnx":  # operators, opset conversion, normalization (see intake.py)
        prepared, model = prepare_onnx(reference, profile, ctx, step, label)
    return reference, prepared, model


def _onnx_to_tflite(source: SourceModel, profile, options: BuildOptions, ctx: PassContext, step: StepFn):
    """An ONNX model for a LiteRT profile: the ONNX intake and the profile's checks, then onnx2tf (float32 .tflite)."""
    label = str(source.path)
    given, prepared, model = _onnx_intake(Artifact("onnx", data=source.data), source, profile, options, ctx, step, label)
    # Ops the device cannot run (Edge TPU: control flow, NMS...) are refused by their ONNX node name,
    # before a conversion that would rename them.
    checks.check_onnx_ops(model, profile, label)
    checks.check_static_shapes(graph_inputs(model), profile, label)
    kind = classify_onnx(model)
    choice = _choice(options, kind, profile)
    _check_litert_scheme(choice, profile)
    # The conversion's parity check feeds the user's data where there is some (an input such as a
    # sample rate cannot be generated); the calibration set proper is loaded after the conversion.
    data = _given_datasets(options, graph_inputs(model))
    ctx.calibration = data[0][1] if data else None
    with step("converting ONNX -> TFLite (onnx2tf)"):
        reference = create_pass("onnx-to-tflite")(prepared, ctx)
    if prepared is not given:
        # The pass compared the .tflite with the normalized model; the model as given is the final word.
        from edgeops.converters.passes.onnx_tflite import check_parity

        check_parity(given.data, reference.data, min_cosine=0.999, feeds=2, data=ctx.calibration)
    ctx.calibration = None
    return reference, kind, choice


def _check_litert_scheme(choice: Choice, profile) -> None:
    if choice.scheme == "fp16":
        raise ConfigError(f"--quantize fp16 is not available on the LiteRT path (profile '{profile.name}'); use dynamic-int8, static-int8, full-int8 or none")


def _tflite_is_quantized(data: bytes) -> bool:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)

    def scaled(t) -> bool:
        # per-channel tensors carry their scales in quantization_parameters; "quantization" reads (0.0, 0)
        return bool(t.get("quantization", (0.0, 0))[0]) or len(t.get("quantization_parameters", {}).get("scales", ())) > 0

    return any(np.dtype(t["dtype"]).kind in "iu" and scaled(t) for t in it.get_tensor_details())


def _tflite_ops(data: bytes) -> list[tuple[str, str]]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data)
    try:
        return [(str(op.get("index")), str(op.get("op_name"))) for op in it._get_ops_details()]  # the public API has no op list
    except AttributeError:
        return []


# --- shared helpers --------------------------------------------------------------------------

def _choice(options: BuildOptions, kind: ModelKind, profile) -> Choice:
    return choose_scheme(options.quantize, kind, profile)


def _load_calibration(options: BuildOptions, choice: Choice, specs: list[TensorSpec]) -> Dataset | None:
    needs = choice.scheme in ("static-int8", "full-int8")
    if needs and not options.calibration:
        alternatives = "dynamic-int8 or none" if choice.scheme == "full-int8" else "dynamic-int8, fp16 or none"
        raise CalibrationMissingError(
            f"{choice.scheme} quantization ({choice.reason}) needs calibration data: pass --calibration DATA "
            f"(.npy, .npz keyed by input name {', '.join(repr(s.name) for s in specs)}, or an image folder; 100-500 representative samples), "
            f"or choose --quantize {alternatives}"
        )
    if not options.calibration:
        return None
    return load_dataset(options.calibration, specs, "calibration", options.image)


def _check_tensor_io(runner, label: str) -> None:
    """Bundles carry tensors: a sequence or map input/output (skl2onnx's ZipMap) is refused by name."""
    bad = [(kind, spec) for kind, specs in (("input", runner.inputs), ("output", runner.outputs)) for spec in specs
           if spec.dtype.startswith(("seq", "map", "opt", "tensor(")) or spec.dtype.startswith("onnx-type")]
    if bad:
        listed = ", ".join(f"{kind} '{spec.name}' of type {spec.dtype}" for kind, spec in bad)
        raise ModelLoadError(
            f"{label}: {listed} is not a tensor; bundles, golden vectors and the device runtime take tensors only. "
            "Export the model with tensor outputs (for skl2onnx: options={'zipmap': False}), or drop that output"
        )


def _trial_run(runner, feeds: list[dict[str, np.ndarray]], role: str, ds: Dataset) -> None:
    """Run the original model on the first feed: data it cannot take is a DataError, not a traceback."""
    if not feeds:
        raise DataError(f"{role} data {ds.source}: no complete feed ({ds.count} samples)")
    try:
        runner.run(feeds[0])
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidArgument, RuntimeException)
        shapes = ", ".join(f"'{k}' {list(np.shape(v))} {np.asarray(v).dtype}" for k, v in feeds[0].items())
        what = "the generated inputs" if ds.source == "generated" else f"{role} data {ds.source}"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"the original model fails on the first feed of {what} ({shapes}): {first}. "
            f"Check the data against the model's inputs {describe_inputs(runner.inputs)}; values the model needs (a sample rate, token ids) "
            "must come from --calibration / --validation data"
        ) from e


def _given_datasets(options: BuildOptions, specs: list[TensorSpec]) -> list[tuple[str, Dataset]]:
    """The calibration and validation data, loaded against the unresolved inputs (to fix open dims)."""
    return [(role, load_dataset(path, specs, role, options.image)) for role, path in (("calibration", options.calibration), ("validation", options.validation)) if path]


def _is_exported_program(obj) -> bool:
    import torch

    return isinstance(obj, torch.export.ExportedProgram)


def _torch_artifact(source: SourceModel, options: BuildOptions) -> Artifact:
    """The torch module with input names and example inputs (factory, --input-shape or data)."""
    import torch

    module = source.module
    names = _torch_input_names(module)
    example = source.example_inputs
    if example is None and _is_exported_program(module):
        ex = getattr(module, "example_inputs", None)
        if ex and ex[0]:
            example = tuple(ex[0])
    if example is None and options.input_shapes:
        missing = [n for n in names if n not in options.input_shapes]
        if missing and len(options.input_shapes) == len(names) == 1:
            names = list(options.input_shapes)
        elif missing:
            raise ConfigError(f"--input-shape must give every input of the PyTorch model: missing {', '.join(missing)} (inputs: {', '.join(names)})")
        gen = torch.Generator().manual_seed(0)
        example = tuple(torch.randn(*options.input_shapes[n], generator=gen) for n in names)
    if example is None:
        example = _example_from_data(options.calibration or options.validation, names)
    if example is None:
        raise ConfigError(f"{source.reference}: cannot tell the input shape of the PyTorch model; pass --input-shape {names[0] if names else 'input'}=1,3,224,224 (one per input), "
                          "or --calibration / --validation data, or give the module an `example_inputs` attribute")
    if len(names) != len(example):
        names = [f"input_{i}" for i in range(len(example))]
    return Artifact("torch", module=module, example_inputs=tuple(example), input_names=names)


def _torch_input_names(module) -> list[str]:
    import torch

    if _is_exported_program(module):
        return [s.arg.name for s in module.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    if isinstance(module, torch.jit.ScriptModule):
        try:
            return [a.name for a in module.forward.schema.arguments[1:]]
        except Exception:
            return ["input"]
    params = [p for p in inspect.signature(module.forward).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [p.name for p in params] or ["input"]


def _example_from_data(path: str | None, names: list[str]) -> tuple | None:
    """First sample of .npy/.npz data as example inputs (so the shape comes from the data)."""
    import torch

    if not path or not Path(path).is_file():
        return None
    try:
        if path.endswith(".npy"):
            arrays = [np.load(path, allow_pickle=False)]
        else:
            with np.load(path, allow_pickle=False) as z:
                keyed = {k: z[k] for k in z.files if k != "labels"}
            arrays = [keyed[n] for n in names] if all(n in keyed for n in names) else (list(keyed.values()) if len(keyed) == len(names) else None)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: cannot read data ({e})") from e
    if not arrays:
        return None
    return tuple(torch.from_numpy(np.ascontiguousarray(a[:1]).astype(np.float32 if a.dtype.kind == "f" else a.dtype)) for a in arrays)


def _first_feed(runner, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [i.name for i in runner.inputs]
    return feed if set(names) == set(feed) else dict(zip(names, feed.values()))


# Golden tolerance when the device computes on an accelerator the build host cannot run (CUDA /
# TensorRT): the host's onnxruntime runs an fp16 model's convolutions in float32 between fp16
# casts, a GPU accumulates and fuses in fp16. Measured on an NVIDIA H200 (onnxruntime-gpu 1.31.1,
# CUDA EP, bench/cuda_check.py, 2026-12-04): PP-OCRv4 det, NudeNet YOLOv8n, ddddocr YOLOX fp16
# bundles differed from the host's golden outputs by 0.9x, 0.4x and 0.65x the error the gates had
# accepted against the fp32 original (up to 3.6x the CPU-to-CPU tolerance below), so every one
# failed its self-test on the GPU. Twice the accepted error, and 4e-3 of the magnitude (eight fp16
# roundings), leave about 2x headroom there and still refuse a wrong or corrupted model.
ACCELERATOR_ERROR_FACTOR = 2.0
ACCELERATOR_MAGNITUDE_FACTOR = 4e-3


def _device_accelerator(profile, target: str) -> str | None:
    """The GPU execution provider the profile's device runs on, when the host validates without it."""
    if target != "onnx":
        return None
    return next((p for p in profile.runtime.providers if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")), None)


def _golden(feeds, ref_runner, built_runner, outputs, metrics: dict, ctx: PassContext, source: str, accelerator: str | None = None) -> GoldenVectors:
    """Golden cases from the first validation feeds; tolerances from the observed error.

    A device's kernels differ from the host's (other SIMD, other int8 rounding), so outputs
    will not match bit for bit. The tolerance per output is the larger of a quarter of the
    quantization error observed against the original (an error of that order is already
    accepted by the gates) and 1e-3 of the output's magnitude, rounded up to two significant digits.
    When the device runs on a GPU provider (``accelerator``) the host cannot reproduce its
    arithmetic: twice the observed error and 4e-3 of the magnitude (see ACCELERATOR_ERROR_FACTOR).

    The device self-test rejects NaN/Inf outputs, so every case must be finite. A feed on which
    the built model gives NaN/Inf where the original is finite is a broken build:
    :class:`NonFiniteOutputError` names the output and the feed. A feed on which the original
    model itself gives NaN/Inf at the same places is legitimate model behaviour: it is skipped
    (with a warning) and the next validation feed is used.
    """
    cases = []
    skipped = []
    for index, (feed, out) in enumerate(zip(feeds, outputs)):
        bad = [name for name, value in out.items() if np.asarray(value).dtype.kind in "fc" and not np.all(np.isfinite(value))]
        if bad:
            ref_out = ref_runner.run(feed)
            ref_by_built = {b: r for r, b in output_pairs(ref_runner.outputs, built_runner.outputs)}
            for name in bad:
                original = ref_out.get(ref_by_built.get(name, name))
                if original is None or not same_nonfinite(original, out[name]):
                    raise NonFiniteOutputError(
                        f"golden vectors: output '{name}' of the built model is NaN/Inf on validation feed {index} "
                        f"(input(s) {', '.join(repr(k) for k in feed)}, samples {_feed_rows(feed, index)} of {source}) "
                        f"while the original model gives {'finite values' if original is not None and np.all(np.isfinite(original)) else 'different values'} there; "
                        "the quantized model overflows or divides by zero: try --calibration-method percentile or entropy, another --quantize scheme, "
                        "or check the calibration data covers that input range"
                    )
            skipped.append((index, bad))
            continue
        cases.append((_first_feed(built_runner, feed), out))
        if len(cases) == GOLDEN_CASES:
            break
    if skipped:
        ctx.warn(
            "golden vectors: skipped validation feed(s) "
            + "; ".join(f"{i} (output {', '.join(repr(n) for n in names)})" for i, names in skipped[:5])
            + " where the original and the built model both give NaN/Inf: the device self-test needs finite outputs"
        )
    if not cases:
        raise NonFiniteOutputError(
            f"golden vectors: every validation feed of {source} gives NaN/Inf outputs in the original model as well as the built one, "
            "so there is nothing the device could self-test against; pass --validation data on which the model gives finite outputs"
        )
    tolerances = {}
    for spec in built_runner.outputs:
        magnitude = max((float(np.max(np.abs(o[spec.name]))) for _, o in cases if o[spec.name].size), default=1.0)
        observed = metrics["outputs"].get(spec.name, {}).get("max_abs_error") or 0.0
        if not math.isfinite(observed):
            raise NonFiniteOutputError(f"golden vectors: the error observed on output '{spec.name}' against the original is {observed}; cannot set a tolerance")
        if accelerator:
            atol = _round_up(max(ACCELERATOR_ERROR_FACTOR * observed, ACCELERATOR_MAGNITUDE_FACTOR * magnitude, 1e-5))
        else:
            atol = _round_up(max(0.25 * observed, 1e-3 * magnitude, 1e-5))
        tolerances[spec.name] = Tolerance(atol=atol, rtol=1e-3)
    if accelerator:
        ctx.warn(f"golden vectors: the device runs on {accelerator}, whose fp16 arithmetic this host cannot run; "
                 f"tolerances are {ACCELERATOR_ERROR_FACTOR:g}x the error accepted against the original (not a quarter), so the self-test "
                 "catches a wrong model, not the GPU's rounding")
    return GoldenVectors(cases=cases, tolerances=tolerances)


def _feed_rows(feed: dict[str, np.ndarray], index: int) -> str:
    """Sample rows of feed ``index`` in the data file (feeds are consecutive slices)."""
    rows = len(next(iter(feed.values()))) if feed else 1
    return f"{index * rows}" if rows == 1 else f"{index * rows}..{index * rows + rows - 1}"


def _round_up(x: float) -> float:
    """Round a positive finite ``x`` up to two significant digits."""
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"_round_up needs a positive finite number, got {x}")
    exp = math.floor(math.log10(x)) - 1
    return round(math.ceil(x / 10**exp) * 10**exp, 12)


def _drift_reference(options: BuildOptions, validation: Dataset, calib: Dataset | None, feeds, built_outputs, ref_runner, built_runner, classifier: bool, ctx: PassContext):
    """Sketches of the built model's inputs and outputs on the validation data (else the
    calibration data) for drift monitoring (:mod:`edgeops.converters.monitoring`)."""
    from edgeops.converters.monitoring import make_reference

    if options.validation:
        source, data_sha, ins, outs = "validation", validation.sha256 or None, [_first_feed(built_runner, f) for f in feeds], list(built_outputs)
    elif calib is not None:
        source, data_sha = "calibration", calib.sha256 or None
        ins = [_first_feed(built_runner, f) for f in calib.batches(ref_runner.inputs, limit=MAX_VALIDATION_FEEDS)]
        outs = [built_runner.run(f) for f in ins]
    else:
        ctx.warn("no --validation or --calibration data: the bundle has no drift reference, so the console cannot score drift for it")
        return None
    return make_reference(source, data_sha, ins, outs, built_runner.inputs, built_runner.outputs, classifier, ctx.warn)


def _data_doc(ds: Dataset | None, feeds: int | None) -> dict | None:
    if ds is None:
        return None
    doc = {"source": Path(ds.source).name if ds.source != "generated" else "generated", "sha256": ds.sha256 or None, "samples": ds.count, "labels": ds.labels is not None, "notes": ds.notes}
    if feeds is not None:
        doc["feeds_compared"] = feeds
    return doc


def _data_label(path: str | None) -> str:
    return Path(path).name if path else "the generated validation inputs"


def _display_name(source: SourceModel) -> str:
    return source.path.name if source.path else source.reference


def _json_bytes(doc: dict) -> bytes:
    import json

    return json.dumps(doc, sort_keys=True, indent=2, allow_nan=False).encode() + b"\n"


def _runtime_options(profile, precision: str | None) -> dict[str, str]:
    """What the device compiles an OpenVINO model with (nothing for the other runtimes)."""
    if profile.runtime.name != "openvino":
        return {}
    return {"device": profile.runtime.openvino_device, "inference_precision": precision or profile.runtime.openvino_precision, "performance_hint": profile.runtime.openvino_hint}


def _device_providers(profile, target: str) -> list[str]:
    """The manifest's providers: the OpenVINO device, the profile's onnxruntime providers, or the
    CPU provider for an onnxruntime candidate shipped under an OpenVINO profile."""
    if target == "openvino":
        return [profile.runtime.openvino_device]
    if profile.runtime.name == "openvino":
        return ["CPUExecutionProvider"]
    return list(profile.runtime.providers)


def _host_runner(target: str, built: Artifact, threads: int, precision: str | None, profile):
    """A runner of the built model on this host at ``threads`` (OpenVINO at the device's precision)."""
    if target == "openvino":
        from edgeops.converters.passes.openvino import OpenVinoRunner

        return OpenVinoRunner(built.module, threads=threads, precision=precision or "f32", hint=profile.runtime.openvino_hint, label="built model")
    return make_runner(target, built.data, threads=threads)


def _toolchain(target: str, source: SourceModel) -> dict[str, str]:
    packages = ["edgeops", "numpy"]
    if source.family == "pytorch":
        packages.append("torch")
    if target == "openvino":
        packages += ["onnx", "onnxruntime", "openvino", "nncf"] + (["onnxscript"] if source.family == "pytorch" else [])
    else:
        packages += ["onnx", "onnxruntime"] + (["onnxscript"] if source.family == "pytorch" else []) if target == "onnx" else ["ai-edge-litert", "ai-edge-quantizer"] + {"pytorch": ["litert-torch"], "onnx": ["onnx", "onnxruntime", "onnx2tf", "tensorflow"]}.get(source.family, [])
    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            continue
    return out


def _git_commit(source: SourceModel) -> str | None:
    """HEAD of the git repository holding the model file (or the current directory)."""
    where = source.path.resolve().parent if source.path else Path.cwd()
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def _provenance_options(options: BuildOptions, choice: Choice, validation: Dataset, calib: Dataset | None) -> dict:
    doc = {
        "quantize": options.quantize,
        "scheme": choice.scheme,
        "calibration_method": options.calibration_method,
        "input_shapes": ";".join(f"{k}={','.join(map(str, v))}" for k, v in sorted(options.input_shapes.items())) or None,
        "validation": "generated" if not options.validation else "given",
        "max_accuracy_drop": options.max_accuracy_drop,
        "max_size_mb": options.max_size_mb,
        "allow_gate_failures": options.allow_gate_failures,
    }
    if (options.calibration and Path(options.calibration).is_dir()) or (options.validation and Path(options.validation).is_dir()):
        doc["image_preprocessing"] = options.image.describe()
    return doc
