"""Which library should normalize third-party ONNX models before the packager analyses them?

Candidates (all maintained, none hand-written): onnxslim (``onnxslim.slim`` with all its steps,
and ``slim-pass``: as the packager's normalize pass calls it, without pattern fusion and dead-node
elimination), onnx-simplifier (``onnxsim.simplify``) and onnxruntime's basic offline optimization
(``GraphOptimizationLevel.ORT_ENABLE_BASIC`` + ``optimized_model_filepath``). For every model:

* ``ok``: the library returned a model without raising;
* ``runs``: onnxruntime loads and runs the normalized model;
* ``correct``: its outputs match the original's on the same inputs (allclose rtol 1e-3, atol 1e-4
  of the output's magnitude), NaN/Inf at the same places;
* ``folded``: no ``Constant`` / ``ConstantOfShape`` node left in the main graph and every Conv /
  MatMul / Gemm weight is an initializer, so the scheme choice sees the real weight distribution;
* ``same bytes``: normalizing twice gives identical bytes (builds must be reproducible);
* seconds spent.

Models: the third-party corpus of bench/corpus.py (``--corpus``, fed with its own data), the
ONNX files that ship in the installed onnx package (``onnx/backend/test/data/{light,simple,pytorch-*}``:
opset 6-12; the "light" model-zoo nets compute their weights with ``ConstantOfShape``
subgraphs), and synthetic opset-9 and opset-11 conv nets with their weights in ``Constant`` nodes
(as Paddle exports have) or computed by constant subgraphs (tests/support/onnx_models.py). A
model whose original onnxruntime cannot run is listed as skipped.

    python bench/normalize.py [--opset 13] [--corpus] [--only NAME] [--json OUT]

With ``--opset 13`` a model below opset 13 is first converted to it by the packager's
convert-opset pass (``onnx.version_converter``, IR version raised to match), as the packager
does before normalizing. onnx-simplifier is not a dependency of edgeops: install it for this
comparison (``pip install onnxsim==0.8.1``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CANDIDATES = ("onnxslim", "slim-pass", "onnxsim", "ort-basic")


def normalize_onnxslim(model):
    import onnxslim

    return onnxslim.slim(model)


def normalize_onnxslim_pass(model):
    from edgeops.converters.passes.normalize import slim

    return slim(model)


def normalize_onnxsim(model):
    import onnxsim

    out, _check = onnxsim.simplify(model)
    return out


def normalize_ort_basic(model):
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(Path(tmp) / "out.onnx")
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return onnx.load(opts.optimized_model_filepath)


NORMALIZERS = {"onnxslim": normalize_onnxslim, "slim-pass": normalize_onnxslim_pass, "onnxsim": normalize_onnxsim, "ort-basic": normalize_ort_basic}


def _models(corpus: bool, only: str | None):
    """(name, ModelProto, feeds or None) for every model of the comparison."""
    import onnx
    from onnx import numpy_helper

    from tests.support.onnx_models import conv_net

    out = []
    for opset in (9, 11):
        for style in ("constant-nodes", "constant-subgraph"):
            out.append((f"synthetic-opset{opset}-{style}", lambda o=opset, s=style: conv_net(opset=o, style=s), None))
    data = Path(onnx.__file__).parent / "backend" / "test" / "data"
    for path in sorted((data / "light").glob("*.onnx")):
        out.append((path.stem, lambda p=path: onnx.load(str(p)), None))
    for folder in sorted(p for sub in ("real", "simple", "pytorch-converted", "pytorch-operator") for p in (data / sub).glob("*") if (p / "model.onnx").exists()):
        def load(f=folder):
            return onnx.load(str(f / "model.onnx"))

        def feeds(f=folder):
            m = onnx.load(str(f / "model.onnx"), load_external_data=False)
            inits = {i.name for i in m.graph.initializer}
            names = [i.name for i in m.graph.input if i.name not in inits]
            files = sorted((f / "test_data_set_0").glob("input_*.pb"))
            if len(files) != len(names):
                return None
            return {n: numpy_helper.to_array(onnx.load_tensor(str(p))) for n, p in zip(names, files)}

        if folder.parent.name == "real":
            continue  # the 'real' models download their weights; the 'light' copies stand in for them
        out.append((f"{folder.parent.name}/{folder.name}", load, feeds))
    if corpus:
        try:
            from bench import corpus as corpus_mod
        except ImportError:
            print("bench/corpus.py not found: corpus skipped", file=sys.stderr)
        else:
            for entry in corpus_mod.entries(include_torch=False):
                def feeds(e=entry):
                    arrays = corpus_mod.make_data(e, 1)
                    # per-sample layout: a leading sample axis in front of the input's exact shape
                    return {k: (np.asarray(v[0]) if e.layout == "per-sample" else v) for k, v in arrays.items() if k != "labels"}

                out.append((f"corpus/{entry.name}", lambda e=entry: onnx.load(str(corpus_mod.fetch(e))), feeds))
    if only:
        out = [m for m in out if only in m[0]]
    return out


def _feeds_for(model) -> dict[str, np.ndarray]:
    """Random inputs for the model's inputs (dynamic dims 1), seeded per input name."""
    from edgeops.converters.graph import graph_inputs

    feeds = {}
    for spec in graph_inputs(model):
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        rng = np.random.default_rng(abs(hash(spec.name)) % (1 << 32))
        dtype = np.dtype(spec.dtype) if not spec.dtype.startswith("onnx-type") else np.float32
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[spec.name] = rng.random(shape) > 0.5
        else:
            feeds[spec.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


def _run(model, feeds):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})))


def _matches(ref: dict, got: dict) -> bool:
    if len(ref) != len(got):
        return False
    for (_, a), (_, b) in zip(ref.items(), got.items()):  # outputs in graph order; normalizers may rename
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return False
        if a.dtype.kind in "fc":
            finite = np.isfinite(a)
            if not np.array_equal(finite, np.isfinite(b)):
                return False
            scale = float(np.max(np.abs(a[finite]))) if finite.any() else 1.0
            if not np.allclose(a[finite], b[finite], rtol=1e-3, atol=1e-4 * max(scale, 1.0)):
                return False
        elif not np.array_equal(a, b):
            return False
    return True


def _opset_of(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _folded(model) -> bool:
    inits = {i.name for i in model.graph.initializer}
    if any(n.op_type in ("Constant", "ConstantOfShape") for n in model.graph.node):
        return False
    return all(n.input[1] in inits for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1
               and not any(n.input[1] == o for m in model.graph.node for o in m.output))


def measure(name: str, load, feeds_fn, opset: int | None = None) -> dict:
    """One row: the original's status and each candidate's outcome on the model (first converted
    to ``opset`` with onnx.version_converter when given, as the packager does outside a profile's range)."""
    row = {"model": name}
    if opset:
        raw_load = load

        def load():
            from edgeops.converters.passes.opset import convert

            m = raw_load()
            return convert(m, opset) if 0 < _opset_of(m) < opset else m  # 0: no ai.onnx operator at all
    try:
        original = load()
        feeds = (feeds_fn() if feeds_fn else None) or _feeds_for(original)
        reference = _run(original, feeds)
    except Exception as e:
        row["skipped"] = f"original does not run in onnxruntime: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        return row
    row["constants_before"] = sum(1 for n in original.graph.node if n.op_type in ("Constant", "ConstantOfShape"))
    for cand in CANDIDATES:
        fn = NORMALIZERS[cand]
        res = {"ok": False, "runs": False, "correct": False, "folded": False, "same_bytes": False}
        start = time.perf_counter()
        try:
            out = fn(load())
            res["seconds"] = round(time.perf_counter() - start, 3)
            res["ok"] = True
            res["folded"] = _folded(out)
            res["same_bytes"] = fn(load()).SerializeToString() == out.SerializeToString()
            got = _run(out, feeds)
            res["runs"] = True
            res["correct"] = _matches(reference, got)
        except Exception as e:
            res.setdefault("seconds", round(time.perf_counter() - start, 3))
            res["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"
        row[cand] = res
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", action="store_true", help="include the models of bench/corpus.py")
    ap.add_argument("--only", help="only models whose name contains this")
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument("--opset", type=int, help="first convert every model below this opset up to it (onnx.version_converter), as the packager does for a model below the profile's range")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    rows = []
    for name, load, feeds in _models(args.corpus, args.only):
        row = measure(name, load, feeds, args.opset)
        rows.append(row)
        if "skipped" in row:
            print(f"{name:48s} skipped ({row['skipped'][:70]})", flush=True)
            continue
        cells = []
        for c in CANDIDATES:
            r = row[c]
            flag = "correct" if r["correct"] else ("WRONG" if r["runs"] else ("no-run" if r["ok"] else "error"))
            cells.append(f"{c}={flag}{'' if r['folded'] else '/unfolded'}{'' if r['same_bytes'] or not r['ok'] else '/nondet'} {r['seconds']:.2f}s")
        print(f"{name:48s} " + "  ".join(cells), flush=True)
    measured = [r for r in rows if "skipped" not in r]
    print(f"\n{len(measured)} models measured, {len(rows) - len(measured)} skipped (original does not run)")
    print(f"{'candidate':10s} {'ok':>4s} {'runs':>5s} {'correct':>8s} {'folded':>7s} {'same bytes':>10s} {'total s':>8s}")
    for c in CANDIDATES:
        col = [r[c] for r in measured]
        print(f"{c:10s} {sum(r['ok'] for r in col):4d} {sum(r['runs'] for r in col):5d} {sum(r['correct'] for r in col):8d} "
              f"{sum(r['folded'] for r in col):7d} {sum(r['same_bytes'] for r in col):10d} {sum(r['seconds'] for r in col):8.1f}")
    for c in CANDIDATES:
        bad = [f"{r['model']} ({r[c].get('error') or ('wrong outputs' if r[c]['runs'] else '')})" for r in measured if not r[c]["correct"]]
        if bad:
            print(f"{c} fails on: " + "; ".join(bad))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
