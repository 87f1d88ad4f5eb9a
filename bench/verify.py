"""Verification throughput of a bundle next to `sha256sum` on the same file, in the same run.

    python bench/verify.py [--size-mb 200] [--repeats 5] [--json]

Builds a bundle of SIZE MB (random artifact, written with edgeops.bundle.write_bundle),
publishes it to a fresh TUF repository, then times, with the file in the page cache:

- ``sha256sum FILE`` (coreutils; one digest over the file: the floor any verifier must pay);
- full verification as ``edgeops verify`` does it: TUF refresh from the trusted root, target
  lookup, then one pass over the file checking its length and sha256 against the signed target
  AND every member against the manifest (:func:`edgeops.trust.verify.verify_bundle_file`).

Reports the best of ``--repeats`` for each and the throughput ratio verify / sha256sum
(target: >= 0.8). Full verification computes two digests over the data (whole file and
members); the second runs on a worker thread, so the ratio depends on a second core being free.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgeops.bundle import Manifest, ManifestBudgets, Provenance, TensorSpec, describe_files, sha256_bytes, write_bundle  # noqa: E402
from edgeops.trust.client import TrustClient  # noqa: E402
from edgeops.trust.keys import Keyring  # noqa: E402
from edgeops.trust.repository import Repository  # noqa: E402
from edgeops.trust.transport import DirectoryTransport  # noqa: E402
from edgeops.trust.verify import verify_bundle_file  # noqa: E402


def build_bundle(path: Path, size_mb: int) -> Path:
    """A valid bundle whose artifact is ``size_mb`` MB of random bytes."""
    model = os.urandom(size_mb * 1_000_000)
    payload = {"model/model.onnx": model, "golden.json": b'{"cases": []}', "report.json": b"{}"}
    manifest = Manifest(
        name="bench",
        version="1.0.0",
        release=1,
        profile="x86_64-avx512-vnni",
        runtime="onnxruntime",
        providers=["CPUExecutionProvider"],
        artifact="model/model.onnx",
        quantization="none",
        inputs=[TensorSpec(name="x", dtype="float32", shape=[1])],
        outputs=[TensorSpec(name="y", dtype="float32", shape=[1])],
        budgets=ManifestBudgets(latency_p95_ms=10.0),
        files=describe_files(payload),
        provenance=Provenance(source_model_sha256=sha256_bytes(model), source_format="onnx"),
    )
    return write_bundle(path, manifest, payload)


def time_sha256sum(path: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["sha256sum", str(path)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def time_hashlib(path: Path) -> float:
    """One sha256 over the file with Python's hashlib (OpenSSL, SHA-NI where the CPU has it)."""
    import hashlib

    t = time.perf_counter()
    with open(path, "rb") as f:
        hashlib.file_digest(f, "sha256")
    return time.perf_counter() - t


def time_verify(path: Path, repo: Path, workdir: Path, i: int) -> float:
    t = time.perf_counter()
    client = TrustClient(workdir / f"md-{i}", DirectoryTransport(repo), root=repo / "metadata" / "1.root.json")
    client.refresh()
    record = client.get_bundle("bench", "1.0.0")
    verify_bundle_file(path, record)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if not shutil.which("sha256sum"):
        sys.exit("sha256sum (coreutils) not found")
    work = Path(tempfile.mkdtemp(prefix="edgeops-bench-verify-"))
    try:
        bundle = build_bundle(work / "bench.bundle", args.size_mb)
        ring = Keyring.create(work / "keys", root_keys=1, root_threshold=1)
        Repository.init(work / "repo", ring).publish(bundle, ring)
        size = bundle.stat().st_size
        time_sha256sum(bundle)  # warm the page cache for both
        sums, verifies, single = [], [], []
        for i in range(args.repeats):  # interleaved, so all see the same machine load
            sums.append(time_sha256sum(bundle))
            verifies.append(time_verify(bundle, work / "repo", work, i))
            single.append(time_hashlib(bundle))
        best_sum, best_verify, best_single = min(sums), min(verifies), min(single)
        result = {
            "bundle_bytes": size,
            "repeats": args.repeats,
            "sha256sum_s": round(best_sum, 4),
            "verify_s": round(best_verify, 4),
            "sha256sum_MBps": round(size / best_sum / 1e6, 1),
            "verify_MBps": round(size / best_verify / 1e6, 1),
            "ratio": round(best_sum / best_verify, 3),
            "hashlib_sha256_s": round(best_single, 4),
            "hashlib_sha256_MBps": round(size / best_single / 1e6, 1),
            "ratio_vs_hashlib": round(best_single / best_verify, 3),
            "target_ratio": 0.8,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
        result["meets_target"] = result["ratio"] >= result["target_ratio"]
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"bundle               {size / 1e6:.1f} MB, best of {args.repeats}, {os.cpu_count()} CPUs")
            print(f"sha256sum            {best_sum:.3f} s  {result['sha256sum_MBps']:.0f} MB/s")
            print(f"edgeops verify path  {best_verify:.3f} s  {result['verify_MBps']:.0f} MB/s  (TUF refresh + target + manifest, one pass)")
            print(f"hashlib sha256       {best_single:.3f} s  {result['hashlib_sha256_MBps']:.0f} MB/s  (one digest, OpenSSL: the floor for this CPU)")
            print(f"ratio verify/hashlib single digest: {result['ratio_vs_hashlib']:.2f}x")
            print(f"ratio verify/sha256sum throughput: {result['ratio']:.2f}x (target >= 0.8x) {'OK' if result['meets_target'] else 'BELOW TARGET'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
