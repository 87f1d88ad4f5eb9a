"""Benchmark of `edgeops build` against fp32 onnxruntime and the naive peer path.

For a trained digits CNN (upsampled to 32x32 so the compute is conv-dominated like a real edge
CNN) and a small transformer encoder, in one run on this machine:

* fp32 onnxruntime (the exported model as is),
* the bundle `edgeops build` makes with ``--quantize auto`` for the profile,
* the naive peer path: ``onnxruntime.quantization.quantize_dynamic`` with default arguments,

each at 1 and 2 intra-op threads (p50 latency of one batch-1 inference, measured in interleaved
rounds so that the three share the host's load alike), size, top-1 accuracy on held-out digits,
accuracy drop and top-1 agreement with fp32.

    python bench/packager.py [--profile x86_64-avx512-vnni] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _accuracy(runner, x, y, optimize_note=""):
    name = runner.inputs[0].name
    preds = np.concatenate([next(iter(runner.run({name: x[i : i + 1]}).values())).argmax(1) for i in range(len(x))])
    return preds, float((preds == y).mean())


def _interleaved_p50(models: dict[str, bytes], feed: dict, runs: int, rounds: int) -> dict[str, dict[int, float]]:
    """p50 latency (ms) per model and thread count, side by side: every round measures each model at
    1 and 2 threads in turn, so load from other jobs on a shared host hits all of them alike; the
    figure is the median over rounds of each round's p50."""
    from edgeops.converters.runtime import OnnxRunner, measure_latency

    runners = {k: {t: OnnxRunner(m, threads=t) for t in (1, 2)} for k, m in models.items()}
    per_round = {k: {t: [] for t in (1, 2)} for k in models}
    for _ in range(rounds):
        for kind, by_threads in runners.items():
            for t, runner in by_threads.items():
                per_round[kind][t].append(measure_latency(runner, feed, runs=max(runs // rounds, 20), warmup=20, max_seconds=10)["p50_ms"])
    return {k: {t: float(np.median(v)) for t, v in by_t.items()} for k, by_t in per_round.items()}


def bench_model(label, sample, profile, workdir: Path, runs: int, rounds: int = 5) -> dict:
    import onnx
    import torch
    from onnxruntime.quantization import quantize_dynamic

    from edgeops.bundle import read_bundle
    from edgeops.converters.pipeline import BuildOptions, build
    from edgeops.converters.runtime import OnnxRunner

    fp32_path = workdir / f"{label}.onnx"
    torch.onnx.export(sample.model, sample.example_inputs, str(fp32_path), dynamo=True, input_names=["input"], output_names=["logits"])
    fp32 = onnx.load(str(fp32_path)).SerializeToString()  # external data inlined
    fp32_path.write_bytes(fp32)
    data = sample.save_npz(workdir / label)
    t0 = time.perf_counter()
    result = build(BuildOptions(model=str(fp32_path), profile=profile, name=label, version="1", output=str(workdir / f"{label}.bundle"),
                                calibration=str(data["calibration"]), validation=str(data["validation"])))
    build_s = time.perf_counter() - t0
    built = read_bundle(result.path).files[result.manifest.artifact]
    naive_path = workdir / f"{label}.naive.onnx"
    quantize_dynamic(str(fp32_path), str(naive_path))  # the peer path, defaults
    naive = naive_path.read_bytes()

    x, y = sample.x_val, sample.y_val
    feed = {"input": x[:1]}
    models = {"fp32": fp32, "edgeops": built, "naive": naive}
    lat = _interleaved_p50(models, feed, runs, rounds)
    rows = {}
    fp32_preds, fp32_acc = _accuracy(OnnxRunner(fp32), x, y)
    for kind, model in models.items():
        preds, acc = _accuracy(OnnxRunner(model), x, y)
        rows[kind] = {"p50_ms_1t": lat[kind][1], "p50_ms_2t": lat[kind][2], "bytes": len(model), "accuracy": acc,
                      "agreement": float((preds == fp32_preds).mean()), "host_kernels_accuracy": acc}
    # On a host without VNNI a full-range u8 x s8 model saturates in onnxruntime's kernels; the
    # build validated it unfused (exact integer semantics, what the VNNI device computes).
    m = result.report["metrics"]
    rows["edgeops"]["accuracy"] = m.get("accuracy_built", rows["edgeops"]["accuracy"])
    rows["edgeops"]["agreement"] = m.get("top1_agreement", rows["edgeops"]["agreement"])
    return {"model": label, "profile": profile, "scheme": result.report["quantization"]["scheme"], "reason": result.report["quantization"]["reason"],
            "passes": result.report["passes"], "build_seconds": round(build_s, 1), "validation_samples": int(len(x)), "warnings": result.warnings, "rows": rows}


def print_table(results: list[dict]) -> None:
    print(f"{'model':<12} {'path':<9} {'p50 1t ms':>10} {'p50 2t ms':>10} {'speedup 1t':>10} {'size KB':>9} {'size x':>7} {'acc %':>7} {'drop pt':>8} {'agree %':>8}")
    for r in results:
        base = r["rows"]["fp32"]
        for kind in ("fp32", "edgeops", "naive"):
            row = r["rows"][kind]
            print(f"{r['model']:<12} {kind:<9} {row['p50_ms_1t']:>10.4f} {row['p50_ms_2t']:>10.4f} {base['p50_ms_1t'] / row['p50_ms_1t']:>9.2f}x "
                  f"{row['bytes'] / 1024:>9.1f} {row['bytes'] / base['bytes']:>7.3f} {100 * row['accuracy']:>7.2f} {round(100 * (base['accuracy'] - row['accuracy']), 2) + 0.0:>8.2f} {100 * row['agreement']:>8.2f}")
        print(f"{'':<12} scheme {r['scheme']}: {r['reason']}")
        e, n = r["rows"]["edgeops"], r["rows"]["naive"]
        print(f"{'':<12} edgeops vs naive: {n['p50_ms_1t'] / e['p50_ms_1t']:.2f}x faster at 1 thread, {n['p50_ms_2t'] / e['p50_ms_2t']:.2f}x at 2 threads; "
              f"host-kernel accuracy of the edgeops model {100 * e['host_kernels_accuracy']:.2f}%")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="x86_64-avx512-vnni")
    parser.add_argument("--quick", action="store_true", help="smaller models and fewer runs (smoke test)")
    parser.add_argument("--runs", type=int, default=2000, help="timed inferences per model and thread count, split over the rounds")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds (median of their p50s)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)

    from edgeops.converters import samples
    from edgeops.profiles import host_cpu_flags

    flags = host_cpu_flags()
    print(f"host: {'VNNI' if {'avx512_vnni', 'avx_vnni'} & flags else 'no VNNI'}, {'AVX-512' if 'avx512f' in flags else 'no AVX-512'}, {'AVX2' if 'avx2' in flags else 'no AVX2'}", file=sys.stderr)
    runs = 200 if args.quick else args.runs
    t = time.perf_counter()
    cnn = samples.train_digits_cnn(size=16 if args.quick else 32, width=8 if args.quick else 32, epochs=3 if args.quick else 6)
    transformer = samples.train_digits_transformer(d_model=64 if args.quick else 128, depth=1 if args.quick else 3, epochs=6 if args.quick else 15)
    print(f"trained in {time.perf_counter() - t:.0f}s: cnn {cnn.val_accuracy:.2%}, transformer {transformer.val_accuracy:.2%}", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgeops-bench-") as tmp:
        for label, sample in (("digits-cnn", cnn), ("transformer", transformer)):
            results.append(bench_model(label, sample, args.profile, Path(tmp), runs, rounds=args.rounds))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
