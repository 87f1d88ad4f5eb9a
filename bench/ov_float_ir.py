"""OpenVINO's float paths for one corpus model, side by side: the ONNX file compiled directly, the IR
with fp16-compressed weights and the IR with f32 weights, at one inference precision (bf16 by
default), interleaved rounds at 1 and 2 threads.

Why: the packager's float IR (what ships when int8 fails a gate or is not faster) was stored with
fp16-compressed weights and ran up to 1.5% behind OpenVINO on the ONNX file (the same network) in
bench/peers.py; this measures the storage choice alone (converters/openvino_build.py
``float_weights_compressed``).

    python bench/ov_float_ir.py ppocr-cls [--precision bf16|f32] [--rounds 15] [--runs 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    import openvino as ov

    from bench import corpus
    from bench.peers import _feeds, _fix_shapes, _lscpu_flags

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args(argv)
    print(f"host: {_lscpu_flags()}")
    entry = corpus.by_name(args.model)
    data = corpus.make_data(entry, 1, seed=0)
    data.pop("labels", None)
    feed = _feeds(data)[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        onnx_path = _fix_shapes(corpus.fetch(entry), feed, folder)
        paths = {"onnx": onnx_path}
        for label, compress in (("ir-fp16-weights", True), ("ir-f32-weights", False)):
            paths[label] = folder / f"{label}.xml"
            ov.save_model(ov.convert_model(str(onnx_path)), str(paths[label]), compress_to_fp16=compress)
        core = ov.Core()
        for threads in (1, 2):
            requests = {}
            for label, path in paths.items():
                config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": args.precision}
                requests[label] = core.compile_model(str(path), "CPU", config).create_infer_request()
                for _ in range(20):
                    requests[label].infer(feed)
            p50: dict[str, list[float]] = {label: [] for label in requests}
            for _ in range(args.rounds):  # interleaved: load from other jobs hits every path alike
                for label, request in requests.items():
                    times = []
                    for _ in range(args.runs):
                        t0 = time.perf_counter()
                        request.infer(feed)
                        times.append(time.perf_counter() - t0)
                    p50[label].append(float(np.median(times)) * 1000)
            base = np.array(p50["onnx"])
            for label, values in p50.items():
                v = np.array(values)
                print(f"{threads}T {label:16} p50 {np.median(v):8.4f} ms  ratio to onnx (median of rounds) {np.median(v / base):.3f}  faster than onnx in {int((v < base).sum())}/{args.rounds} rounds")


if __name__ == "__main__":
    main()
