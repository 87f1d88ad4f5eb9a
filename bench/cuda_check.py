"""Check bundles built for a CUDA profile (jetson-orin-nano) on a machine with an NVIDIA GPU.

What it answers, per bundle:

* the hardware-in-loop run (`edgeops hil run --local`): integrity, self-test against the golden
  vectors the build host computed on its CPU, latency, and which execution providers the
  session really ran on (onnxruntime drops TensorRT/CUDA when their libraries fail to load);
* the same fp16 model on the CPU and on the CUDA execution provider side by side: the largest
  difference between the two and how much of the golden tolerance it uses, and the latency
  ratio (interleaved rounds, batch 1).

Needs onnxruntime-gpu (its CUDA libraries) and edgeops installed; prints one JSON document.

    python bench/cuda_check.py B1.bundle B2.bundle [--runs 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _gpu_name() -> str:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi failed: {e}"


def _interleaved_ms(sessions: dict, feed: dict, rounds: int, per_round: int) -> dict[str, float]:
    """Median latency (ms) per session, rounds interleaved so drift hits both alike."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            for _ in range(per_round):
                t = time.perf_counter()
                sess.run(None, feed)
                times[name].append((time.perf_counter() - t) * 1000.0)
    return {k: float(np.median(v)) for k, v in times.items()}


def compare_cpu_cuda(bundle: Path, runs: int) -> dict:
    """The bundle's model on CPU and CUDA: output differences against the golden tolerance, latency."""
    import onnxruntime as ort

    from edgeops.agent.selftest import load_golden
    from edgeops.bundle import extract_bundle

    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp) / "b"
        manifest = extract_bundle(bundle, files)
        golden = load_golden(files)
        model = str(files / manifest.artifact)
        cpu = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        cuda = ort.InferenceSession(model, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        names = [o.name for o in cuda.get_outputs()]
        worst: dict[str, dict] = {}
        for feed, expected in golden.cases:
            got_cpu = dict(zip(names, cpu.run(None, feed)))
            got_cuda = dict(zip(names, cuda.run(None, feed)))
            for name in names:
                tol = golden.tolerances.get(name)
                ref = np.asarray(expected[name], dtype=np.float64)
                diff = np.abs(np.asarray(got_cuda[name], dtype=np.float64) - ref)
                # share of the tolerance used: |cuda - golden| / (atol + rtol * |golden|); > 1 fails
                used = float(np.max(diff / (tol.atol + tol.rtol * np.abs(ref)))) if tol else None
                row = worst.setdefault(name, {"max_abs_cuda_vs_golden": 0.0, "max_abs_cuda_vs_cpu": 0.0, "tolerance_used": 0.0})
                row["max_abs_cuda_vs_golden"] = max(row["max_abs_cuda_vs_golden"], float(diff.max()))
                row["max_abs_cuda_vs_cpu"] = max(row["max_abs_cuda_vs_cpu"], float(np.max(np.abs(got_cuda[name].astype(np.float64) - got_cpu[name]))))
                if used is not None:
                    row["tolerance_used"] = max(row["tolerance_used"], used)
        feed = golden.cases[0][0]
        for sess in (cpu, cuda):  # warm-up: cuDNN picks its algorithms on the first runs
            for _ in range(5):
                sess.run(None, feed)
        per_round = max(1, runs // 10)
        ms = _interleaved_ms({"cpu": cpu, "cuda": cuda}, feed, rounds=10, per_round=per_round)
        return {
            "cuda_session_providers": cuda.get_providers(),
            "outputs": worst,
            "golden_cases": len(golden.cases),
            "p50_ms": {k: round(v, 3) for k, v in ms.items()},
            "cuda_speedup_over_cpu": round(ms["cpu"] / ms["cuda"], 2),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from edgeops.hil.local import run_local

    if hasattr(ort, "preload_dlls"):
        # onnxruntime-gpu finds CUDA/cuDNN from the nvidia-* pip packages only when asked to
        # (a Jetson has them on the system library path instead)
        ort.preload_dlls()

    doc: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": _gpu_name(),
        "cpu": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "bundles": {},
    }
    for bundle in args.bundles:
        hil = run_local(bundle, runs=args.runs).to_dict()
        row: dict = {"hil_passed": hil["passed"], "hil_checks": {c["name"]: {"passed": c["passed"], "detail": c["detail"][:300]} for c in hil["checks"]}, "hil_figures": hil["figures"]}
        try:
            row["cpu_vs_cuda"] = compare_cpu_cuda(bundle, args.runs)
        except Exception as e:  # report and go on: one bundle's failure says something too
            row["cpu_vs_cuda"] = {"error": f"{type(e).__name__}: {e}"[:500]}
        doc["bundles"][bundle.name] = row
    text = json.dumps(doc, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if all(r["hil_passed"] for r in doc["bundles"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
