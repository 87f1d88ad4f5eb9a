"""edgeops against the peer paths a user could take instead, on conv nets, in one interleaved run.

For each model (the digits CNN, a MobileNetV2 export, the corpus conv nets), batch 1, at 1 and 2
threads, measured in interleaved rounds so load from other jobs hits every path alike:

* ``ort-fp32``: the model in onnxruntime as given;
* ``ort-qdq``: onnxruntime's best static recipe: ``quant_pre_process`` then ``quantize_static`` QDQ,
  per-channel, u8 activations / s8 weights;
* ``ort-dynamic``: ``quantize_dynamic`` with default arguments;
* ``ov-default``: OpenVINO on the model as given with its default precision (bf16 for float parts
  on AVX512_BF16/AMX CPUs, else f32);
* ``ov-nncf``: OpenVINO + ``nncf.quantize`` with NNCF's defaults;
* ``edgeops-ov``: the bundle `edgeops build --profile x86_64-openvino-int8` makes (as its agent runs it);
  at 2 threads, the bundle built for that profile with ``runtime.threads = 2`` (a device that runs
  2 threads says so in its profile, and the build times its candidates there);
* ``edgeops-ort``: the bundle `edgeops build --profile x86_64-avx512-vnni` makes;
* with ``--control``, ``ov-nncf-again``: the ``ov-nncf`` IR compiled a second time, timed as a
  path of its own and never counted as a peer: its ratio to ``ov-nncf`` is what this run measures
  between two instances of one network (the resolution of every ratio above it).

Every path is compiled (OpenVINO) or loaded (onnxruntime) anew at the start of each round
(``--no-fresh-instances`` keeps one instance a path for the whole run): two instances of one
network differ by about 1% on a host like this one, an offset that stays for an instance's life,
so with one instance a path the per-round ratios share it and their interval cannot cover it.

Printed per model and thread count: p50 ms, speed-up over ort-fp32, the edgeops-ov latency as a
ratio to the best peer path (target: at most 1.0) and to the best one within the profile's gates,
with the number of rounds edgeops-ov was the faster of the two and a verdict from a 95% t interval
of the per-round ratio's geometric mean (faster / tie / slower), the peers whose IR holds the same
weights as edgeops-ov's (the same network: their ratio is the run's noise), size, and parity with
fp32 (cosine, top-1 agreement for classifiers). The host's CPU flags (lscpu) are printed first.

    python bench/peers.py [--models digits,mobilenet-v2,ppocrv4-det,...] [--rounds 5] [--runs 30] [--control] [--json OUT]
    python bench/peers.py --markdown-from OUT    # the table docs/benchmarks.md quotes

Corpus models are read from the corpus cache (``python bench/corpus.py fetch NAME`` first).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_MODELS = "digits,mobilenet-v2,ppocrv4-det,ppocr-cls,nudenet-320n"
CALIBRATION = 64
VALIDATION = 16
LABELLED_VALIDATION = 200  # where the data has labels: enough feeds for accuracy to resolve 0.5 points


PROFILE_OV = "x86_64-openvino-int8"
CONTROL = "ov-nncf-again"  # the ov-nncf IR compiled twice: a measured tie, never a peer


def _lscpu_flags() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "?"
    lines = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    keep = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "fma")
    flags = [f for f in lines.get("Flags", "").split() if f in keep]
    return f"{lines.get('Model name', '?')}, {lines.get('CPU(s)', '?')} CPUs, flags: {' '.join(flags)}"


def _model(name: str, folder: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None]:
    """(onnx path, calibration data, validation data, validation labels or None)."""
    import torch

    if name == "digits":
        from edgeops.converters import samples

        s = samples.train_digits_cnn(size=32, width=16, epochs=4)
        path = folder / "digits.onnx"
        torch.onnx.export(s.model, s.example_inputs, str(path), dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"])
        return path, {"input": s.x_calib[:CALIBRATION]}, {"input": s.x_val}, s.y_val
    from bench import corpus

    entry = corpus.by_name(name)
    if entry.factory:  # mobilenet-v2 (random weights), mobilenet-v2-digits (trained here): exported as the packager does
        from importlib import import_module

        module_name, factory = entry.factory.split(":")
        module, example = getattr(import_module(module_name), factory)()
        path = folder / f"{name}.onnx"
        torch.onnx.export(module, example, str(path), dynamo=False, opset_version=17, input_names=[i.name for i in entry.inputs], output_names=["logits"])
    else:
        path = corpus.model_path(entry)
        if not path.exists():
            raise SystemExit(f"{name}: not in the corpus cache; run: python bench/corpus.py fetch {name}")
    data = corpus.make_data(entry, CALIBRATION + LABELLED_VALIDATION, seed=0, labels=True)
    labels = data.pop("labels", None)
    end = CALIBRATION + (LABELLED_VALIDATION if labels is not None else VALIDATION)
    calib = {k: v[:CALIBRATION] for k, v in data.items()}
    val = {k: v[CALIBRATION:end] for k, v in data.items()}
    return path, calib, val, (labels[CALIBRATION:end] if labels is not None else None)


def _fix_shapes(path: Path, feed: dict[str, np.ndarray], folder: Path) -> Path:
    """The model with every input fixed to the batch-1 feed's shape (what the peers are given too)."""
    import onnx

    model = onnx.load(str(path))
    for inp in model.graph.input:
        if inp.name in feed:
            dims = inp.type.tensor_type.shape.dim
            for d, n in zip(dims, feed[inp.name].shape):
                d.ClearField("dim_param")
                d.dim_value = int(n)
    out = folder / f"{path.stem}.fixed.onnx"
    onnx.save(model, str(out))
    return out


def _feeds(data: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(data.values())))
    return [{k: v[i : i + 1] for k, v in data.items()} for i in range(n)]


def _why(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:120] if text else ''}"


def _ort_paths(path: Path, calib: list[dict], folder: Path, notes: dict[str, str]) -> dict[str, Path]:
    """fp32, ORT's best static QDQ and quantize_dynamic defaults. Where ORT's tools fail on the model
    as given, they get it after onnxslim (the packager's normalize pass), and the note says so."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    from bench.ort_quant import feeds_reader, pre_process

    def normalized() -> Path:
        import onnx
        import onnxslim

        out = folder / "slim.onnx"
        if not out.exists():
            onnx.save(onnxslim.slim(onnx.load(str(path))), str(out))
        return out

    paths = {"ort-fp32": path}
    for label, make in (("ort-qdq", "qdq"), ("ort-dynamic", "dynamic")):
        for source in ("as given", "after onnxslim"):
            src = path if source == "as given" else normalized()
            out = folder / f"{make}.onnx"
            try:
                if make == "qdq":
                    pre = folder / "pre.onnx"
                    failed = pre_process(src, pre, folder)
                    if failed:
                        notes[f"{label} pre-process"] = f"quant_pre_process failed ({_why(failed)}); run with skip_symbolic_shape=True"
                    quantize_static(str(pre), str(out), feeds_reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
                else:
                    quantize_dynamic(str(src), str(out))
                paths[label] = out
                if source != "as given":
                    notes[label] = "failed on the model as given; measured after onnxslim"
                break
            except Exception as e:
                notes[f"{label} ({source})"] = _why(e)
    return paths


def _ov_nncf(path: Path, calib: list[dict], folder: Path) -> Path:
    import nncf
    import openvino as ov

    q = nncf.quantize(ov.convert_model(str(path)), nncf.Dataset(calib), subset_size=len(calib))  # NNCF defaults
    out = folder / "nncf.xml"
    ov.save_model(q, str(out))
    return out


def _profile_for_threads(name: str, threads: int, folder: Path) -> str:
    """The built-in profile ``name`` as a file of its own with ``runtime.threads = threads``: the
    profile of a device that runs inference on that many threads (its build times the candidates there)."""
    import re

    from edgeops.profiles import builtin_profiles_dir

    text = (builtin_profiles_dir() / f"{name}.toml").read_text()
    new, count = re.subn(r"(?m)^threads = \d+$", f"threads = {threads}", text)
    if count != 1:
        raise SystemExit(f"{name}.toml: expected one 'threads = N' line, found {count}")
    out = folder / f"{name}-{threads}t.toml"
    out.write_text(new)
    return str(out)


def _edgeops(path: Path, calib: dict, val: dict, labels, profile: str, folder: Path):
    from edgeops.bundle import extract_bundle
    from edgeops.converters.pipeline import BuildOptions, build

    np.savez(folder / "calibration.npz", **calib)
    np.savez(folder / "validation.npz", **val, **({"labels": labels} if labels is not None else {}))
    stem = Path(profile).stem
    out = folder / f"{stem}.bundle"
    t0 = time.perf_counter()
    result = build(BuildOptions(model=str(path), profile=profile, name="m", version="1", output=str(out), calibration=str(folder / "calibration.npz"),
                                validation=str(folder / "validation.npz"), allow_gate_failures=True))  # latency runs: the default, as a user builds
    seconds = time.perf_counter() - t0
    files = folder / stem
    manifest = extract_bundle(result.path, files)
    return files / manifest.artifact, manifest, result.report, seconds


class _Ort:
    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads, o.log_severity_level = threads, 1, 3
        self.s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.s.get_inputs()]

    def run(self, feed):
        return self.s.run(None, {n: feed[n] for n in self.names})[0]


class _Ov:
    def __init__(self, path: Path, threads: int, precision: str | None):
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.c = ov.Core().compile_model(str(path), "CPU", config)
        self.r = self.c.create_infer_request()

    def run(self, feed):
        return np.array(self.r.infer(feed)[self.c.outputs[0]])


def _within_gates(doc: dict, fp32: dict) -> bool:
    """Whether a path's parity with fp32 clears the OpenVINO profile's gates as `edgeops build`
    applies them: worst cosine over the feeds, top-1 agreement, accuracy drop (where labelled)."""
    from edgeops.profiles import load_profile

    b = load_profile(PROFILE_OV).budgets
    if doc["cosine_min"] < b.min_cosine:
        return False
    if "top1_agreement" in doc and doc["top1_agreement"] < b.min_agreement:
        return False
    return not ("accuracy" in doc and "accuracy" in fp32 and (fp32["accuracy"] - doc["accuracy"]) * 100 > b.max_accuracy_drop)


def timed_rounds(make, labels: list[str], feed: dict, rounds: int, runs: int, fresh: bool = True, seed: int = 0) -> dict[str, list[float]]:
    """p50 ms of each path per round. Interleaved: every round times every path, one after the
    other (:func:`edgeops.converters.runtime.p50s_in_order`, as the packager times its
    candidates), in a new order each round (no path always follows the same one); with
    ``fresh``, every path is made anew (``make(label)``) at the start of each round: two
    compilations of one network differ by ~1% (where their buffers land), a per-instance offset
    the rounds then average over."""
    from edgeops.converters.runtime import p50s_in_order

    samples: dict[str, list[float]] = {label: [] for label in labels}
    order = list(labels)
    shuffle = np.random.default_rng(seed)
    runners: dict = {}
    for i in range(rounds):
        if fresh or i == 0:
            runners.clear()  # the previous instances go first: two copies of a big model at once cost memory
            runners.update({label: make(label) for label in labels})
        shuffle.shuffle(order)
        for label, p50 in p50s_in_order({label: runners[label] for label in order}, feed, runs, warmup=5).items():
            samples[label].append(p50)
    return samples


def _size(path: Path) -> int:
    size = path.stat().st_size
    for extra in (path.with_suffix(".bin"), Path(str(path) + ".data")):
        if extra.exists():
            size += extra.stat().st_size
    return size


def _weights_digest(path: Path) -> str | None:
    """sha256 of an OpenVINO IR's weights file (None for other formats): two IRs with one digest
    hold the same quantized network, so their latency ratio is the run's noise."""
    import hashlib

    weights = path.with_suffix(".bin")
    return hashlib.sha256(weights.read_bytes()).hexdigest() if path.suffix == ".xml" and weights.exists() else None


def ratio_verdict(ours: list[float], theirs: list[float]) -> dict:
    """The per-round latency ratio ours/theirs: its median, its geometric mean with a 95%
    Student-t interval (on the log ratios, one per round), and the verdict the interval allows:
    "faster" (all of it under 1.0), "slower" (all over), else "tie" (this run cannot tell the two
    apart; two byte-identical networks should land here).

    A t interval, not a bootstrap of the median: over 7 rounds the bootstrap's interval was
    narrower than the spread between two instances of one network, and 3 of 24 control ratios
    (bench/peers.py --control, 2026-12-05) came out "faster" or "slower" against themselves. The t
    interval takes the rounds' own spread at the width 7 samples allow, and widens when one round
    ran under load that hit one path only."""
    from scipy import stats

    logs = np.log([a / b for a, b in zip(ours, theirs) if a > 0 and b > 0])
    mean = float(np.mean(logs))
    half = float(stats.t.ppf(0.975, len(logs) - 1) * np.std(logs, ddof=1) / np.sqrt(len(logs))) if len(logs) > 1 else float("inf")
    lo, hi = (round(float(np.exp(mean + d)), 3) for d in (-half, half))
    return {"round_ratio_median": round(float(np.exp(np.median(logs))), 3), "round_ratio_geomean": round(float(np.exp(mean)), 3),
            "round_ratio_ci95": [lo, hi], "verdict": "faster" if hi < 1.0 else "slower" if lo > 1.0 else "tie"}


def bench_model(name: str, rounds: int, runs: int, control: bool = False, fresh: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"peers-{name}-") as tmp:
        folder = Path(tmp)
        src, calib, val, labels = _model(name, folder)
        first = _feeds(val)[0]
        path = _fix_shapes(src, first, folder)
        calib_feeds = _feeds(calib)
        failed: dict[str, str] = {}  # a peer path that cannot handle the model as given is a result too
        paths = _ort_paths(path, calib_feeds, folder, failed)
        paths["ov-default"] = path
        try:
            paths["ov-nncf"] = _ov_nncf(path, calib_feeds, folder)
        except Exception as e:
            failed["ov-nncf"] = _why(e)
        ov_ir, ov_manifest, ov_report, ov_seconds = _edgeops(path, calib, val, labels, PROFILE_OV, folder)
        # the device that runs 2 threads has a profile saying so: its bundle's candidates were timed at 2 threads
        ov2_ir, ov2_manifest, ov2_report, ov2_seconds = _edgeops(path, calib, val, labels, _profile_for_threads(PROFILE_OV, 2, folder), folder)
        ort_art, _, ort_report, ort_seconds = _edgeops(path, calib, val, labels, "x86_64-avx512-vnni", folder)
        paths["edgeops-ov"], paths["edgeops-ort"] = ov_ir, ort_art
        edgeops_ov = {1: (ov_ir, ov_manifest), 2: (ov2_ir, ov2_manifest)}
        precision = {"ov-nncf": None, "ov-default": None, CONTROL: None}
        if control and "ov-nncf" in paths:
            paths[CONTROL] = paths["ov-nncf"]

        def make(label, threads):
            if label == "edgeops-ov":
                # under auto the OpenVINO profile may ship onnxruntime's int8 (an onnxruntime bundle): run it as its agent would
                artifact, manifest = edgeops_ov[threads]
                if manifest.runtime == "openvino":
                    return _Ov(artifact, threads, manifest.runtime_options.get("inference_precision", "f32"))
                return _Ort(artifact, threads)
            return _Ov(paths[label], threads, precision[label]) if label in precision else _Ort(paths[label], threads)

        for label in list(paths):  # a peer tool that wrote a model its runtime refuses is a result too
            try:
                make(label, 1).run(first)
            except Exception as e:
                failed[f"{label} (refused by its runtime)"] = _why(e)
                del paths[label]

        def bundle_doc(manifest, report, seconds):
            cos = [o["cosine_min"] for o in report["metrics"]["outputs"].values() if o.get("cosine_min") is not None]
            return {"runtime": manifest.runtime, "precision": manifest.runtime_options.get("inference_precision") if manifest.runtime == "openvino" else None,
                    "scheme": report["quantization"]["scheme"], "status": report["status"], "build_s": round(seconds, 1),
                    "metrics": {**{k: report["metrics"].get(k) for k in ("top1_agreement", "accuracy_drop_points")}, "worst_cosine": min(cos) if cos else None}}

        result = {"model": name, "inputs": {k: list(v.shape) for k, v in first.items()}, "sizes": {k: _size(p) for k, p in paths.items()},
                  "edgeops_ov": bundle_doc(ov_manifest, ov_report, ov_seconds), "edgeops_ov_2t": bundle_doc(ov2_manifest, ov2_report, ov2_seconds),
                  "edgeops_ort": {"scheme": ort_report["quantization"]["scheme"], "status": ort_report["status"], "build_s": round(ort_seconds, 1)},
                  "failed_peers": failed, "threads": {}}
        ours = _weights_digest(paths["edgeops-ov"])
        result["same_weights_as_edgeops_ov"] = sorted(k for k, p in paths.items() if k not in ("edgeops-ov", CONTROL) and ours and _weights_digest(p) == ours)
        # parity with fp32 onnxruntime on the validation feeds (1 thread)
        ref = make("ort-fp32", 1)
        feeds = _feeds(val)[: len(labels) if labels is not None else VALIDATION]
        ref_out = [ref.run(f) for f in feeds]
        parity = {}
        for label in paths:
            r = make(label, 1)
            outs = [r.run(f) for f in feeds]
            cos = [float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)) for a, b in zip(ref_out, outs)]
            doc = {"cosine_mean": round(float(np.mean(cos)), 5), "cosine_min": round(float(np.min(cos)), 5)}
            if ref_out[0].ndim == 2 and ref_out[0].shape[1] > 1:
                doc["top1_agreement"] = round(float(np.mean([a.argmax() == b.argmax() for a, b in zip(ref_out, outs)])), 4)
                if labels is not None:
                    doc["accuracy"] = round(float(np.mean([b.argmax() == y for b, y in zip(outs, labels)])), 4)
            parity[label] = doc
        result["parity"] = parity
        result["within_gates"] = sorted(label for label, doc in parity.items() if _within_gates(doc, parity["ort-fp32"]))
        for threads in (1, 2):
            samples = timed_rounds(lambda label: make(label, threads), list(paths), first, rounds, runs, fresh, seed=threads)
            p50 = {label: round(float(np.median(v)), 3) for label, v in samples.items()}
            peers = {k: v for k, v in p50.items() if not k.startswith("edgeops") and k != CONTROL}
            best = min(peers, key=peers.get)
            # a peer the profile's gates would refuse is not a path a user of edgeops could ship
            gated = {k: v for k, v in peers.items() if k in result["within_gates"]}
            best_gated = min(gated, key=gated.get)  # ort-fp32 is always within them
            result["threads"][threads] = {
                "p50_ms": p50,
                "samples_ms": {k: [round(x, 4) for x in v] for k, v in samples.items()},  # per round: to check any verdict rule against the control later
                "speedup_vs_ort_fp32": {k: round(p50["ort-fp32"] / v, 2) for k, v in p50.items()},
                "best_peer": best,
                "edgeops_ov_vs_best_peer": round(p50["edgeops-ov"] / p50[best], 3),
                "best_peer_within_gates": best_gated,
                "edgeops_ov_vs_best_peer_within_gates": round(p50["edgeops-ov"] / p50[best_gated], 3),
                # how many interleaved rounds edgeops-ov was the faster of the two: the ratio's spread
                "rounds_edgeops_ov_faster_than_best_within_gates": f"{sum(a < b for a, b in zip(samples['edgeops-ov'], samples[best_gated]))}/{rounds}",
                **ratio_verdict(samples["edgeops-ov"], samples[best_gated]),
            }
            if CONTROL in samples:
                result["threads"][threads]["control"] = ratio_verdict(samples[CONTROL], samples["ov-nncf"])
            # the speed-up target (e.g. MobileNetV2 >= 2.5x) with the same per-round interval as the ratios
            speedup = ratio_verdict(samples["ort-fp32"], samples["edgeops-ov"])
            result["threads"][threads]["edgeops_ov_speedup_rounds"] = {"geomean": speedup["round_ratio_geomean"], "ci95": speedup["round_ratio_ci95"]}
        return result


def _shipped(bundle: dict) -> str:
    """What a build shipped, in a table cell: runtime, inference precision, int8 or float."""
    kind = "int8" if bundle["scheme"] == "static-int8" else "float"
    if bundle["runtime"] == "openvino":
        return f"OV {bundle['precision'] or 'f32'} {kind}"
    return f"ORT {kind}"


def _versus(th: dict) -> str:
    cell = f"{th['best_peer_within_gates']} {th['round_ratio_geomean']} [{th['round_ratio_ci95'][0]}-{th['round_ratio_ci95'][1]}]"
    return f"{cell} **{th['verdict']}**" if th["verdict"] != "tie" else f"{cell} tie"


def markdown_table(doc: dict) -> str:
    """The run's verdicts as the markdown table docs/benchmarks.md quotes: per model, what each
    bundle shipped, edgeops-ov's speed-up over fp32 onnxruntime (the p50s' ratio, and in brackets
    the per-round geometric mean with its 95% interval where the run has it), its ratio to the best peer within
    the gates with the interval and verdict, and the control beside it (where the run had one).
    Rendered from the --json file so the quoted figures are the measured ones, not retyped."""
    head = "| model | shipped 1T / 2T | 1T x | 1T vs best within gates | 1T control | 2T x | 2T vs best within gates | 2T control |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in doc["results"]:
        one, two = _shipped(r["edgeops_ov"]), _shipped(r["edgeops_ov_2t"])
        cells = [r["model"], f"{one} / {'same' if two == one else two}"]
        for t in ("1", "2"):
            th = r["threads"].get(t) or r["threads"][int(t)]
            control = th.get("control")
            up = th.get("edgeops_ov_speedup_rounds")
            x = f"{th['speedup_vs_ort_fp32']['edgeops-ov']:.2f}" + (f" ({up['geomean']:.2f} [{up['ci95'][0]:.2f}-{up['ci95'][1]:.2f}])" if up else "")
            cells += [x, _versus(th),
                      f"{control['round_ratio_geomean']} {control['verdict']}" if control else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--control", action="store_true", help=f"also time the ov-nncf IR compiled a second time ({CONTROL}): the run's resolution")
    ap.add_argument("--fresh-instances", action=argparse.BooleanOptionalAction, default=True,
                    help="compile/load every path anew each round (default), so a per-instance offset is averaged over, not measured as a difference")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown-from", type=Path, metavar="JSON", help="print the markdown table of an earlier run's --json file and exit")
    args = ap.parse_args(argv)
    if args.markdown_from:
        print(markdown_table(json.loads(args.markdown_from.read_text())))
        return
    print(f"host: {_lscpu_flags()}")
    results = []
    for name in args.models.split(","):
        r = bench_model(name, args.rounds, args.runs, args.control, args.fresh_instances)
        results.append(r)
        print(f"\n{name} {r['inputs']}  edgeops-ov: {r['edgeops_ov']}  edgeops-ov built for 2 threads: {r['edgeops_ov_2t']}  edgeops-ort: {r['edgeops_ort']}")
        for label, why in r["failed_peers"].items():
            print(f"  note: {label}: {why}")
        labels = list(r["sizes"])
        print(f"  {'path':<12} {'size KB':>9} {'cosine':>8} {'top1':>6} {'acc':>6} " + " ".join(f"{f'{t}T ms':>9} {f'{t}T x':>6}" for t in (1, 2)))
        for label in labels:
            p = r["parity"][label]
            cells = " ".join(f"{r['threads'][t]['p50_ms'][label]:>9.3f} {r['threads'][t]['speedup_vs_ort_fp32'][label]:>6.2f}" for t in (1, 2))
            print(f"  {label:<12} {r['sizes'][label] / 1024:>9.0f} {p['cosine_mean']:>8.4f} {p.get('top1_agreement', float('nan')):>6.3f} {p.get('accuracy', float('nan')):>6.3f} {cells}")
        for t in (1, 2):
            th = r["threads"][t]
            print(f"  {t} thread(s): edgeops-ov / best peer ({th['best_peer']}) = {th['edgeops_ov_vs_best_peer']}; "
                  f"/ best peer within the profile's gates ({th['best_peer_within_gates']}) = {th['edgeops_ov_vs_best_peer_within_gates']} "
                  f"(edgeops-ov faster in {th['rounds_edgeops_ov_faster_than_best_within_gates']} rounds; per-round ratio {th['round_ratio_median']}, "
                  f"geometric mean {th['round_ratio_geomean']}, 95% interval {th['round_ratio_ci95'][0]}-{th['round_ratio_ci95'][1]}: {th['verdict']})")
            up = th["edgeops_ov_speedup_rounds"]
            print(f"  {t} thread(s): edgeops-ov over ort-fp32, per-round geometric mean {up['geomean']}x, 95% interval {up['ci95'][0]}-{up['ci95'][1]}")
            if "control" in th:
                c = th["control"]
                print(f"  {t} thread(s) control: {CONTROL} / ov-nncf (one network, two instances) = {c['round_ratio_median']}, geometric mean {c['round_ratio_geomean']}, "
                      f"95% interval {c['round_ratio_ci95'][0]}-{c['round_ratio_ci95'][1]}: {c['verdict']}")
        if r["same_weights_as_edgeops_ov"]:
            print(f"  edgeops-ov holds the same weights as: {', '.join(r['same_weights_as_edgeops_ov'])} (their ratio is this run's noise)")
        sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps({"host": _lscpu_flags(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
