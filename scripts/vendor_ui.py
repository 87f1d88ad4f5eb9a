#!/usr/bin/env python3
"""Fetch the console's JavaScript/CSS from the npm registry into fleet/ui/static/vendor/.

The console runs air-gapped, so nothing is loaded from a CDN at run time: the files are vendored
into the package and committed. Each library is pinned to one version below; the tarball is
checked against the registry's ``dist.integrity`` (sha512) before anything is extracted, and the
lock file (fleet/ui/static/vendor/vendor.lock.json) records version, tarball URL, integrity and
the sha256 of every file taken. ``--check`` verifies the committed files against the lock
without the network (tests/fleet/ui/test_static.py runs it).

    python scripts/vendor_ui.py            # fetch and (re)write the files and the lock
    python scripts/vendor_ui.py --check    # verify committed files against the lock
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

REGISTRY = "https://registry.npmjs.org"
VENDOR = Path(__file__).resolve().parent.parent / "fleet" / "ui" / "static" / "vendor"
LOCK = VENDOR / "vendor.lock.json"

# package, version, {path in the tarball: file name under vendor/}
PINS = [
    ("htmx.org", "2.0.11", {"package/dist/htmx.min.js": "htmx.min.js"}),
    ("uplot", "1.6.32", {"package/dist/uPlot.iife.min.js": "uPlot.iife.min.js", "package/dist/uPlot.min.css": "uPlot.min.css"}),
]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def fetch() -> dict:
    """Download, verify and extract every pinned file; returns the lock document."""
    VENDOR.mkdir(parents=True, exist_ok=True)
    lock: dict = {"registry": REGISTRY, "packages": {}}
    for name, version, files in PINS:
        meta = json.loads(_get(f"{REGISTRY}/{name}/{version}"))
        tarball_url, integrity = meta["dist"]["tarball"], meta["dist"]["integrity"]
        tgz = _get(tarball_url)
        algo, _, want = integrity.partition("-")
        got = base64.b64encode(hashlib.new(algo, tgz).digest()).decode()
        if got != want:
            raise SystemExit(f"{name}@{version}: tarball {algo} {got} does not match the registry's integrity {want}")
        entry = {"version": version, "tarball": tarball_url, "integrity": integrity, "license": meta.get("license"), "files": {}}
        with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
            for member, out_name in files.items():
                data = tar.extractfile(member).read()
                (VENDOR / out_name).write_bytes(data)
                entry["files"][out_name] = {"from": member, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        lock["packages"][name] = entry
        print(f"{name}@{version}: {', '.join(files.values())}")
    LOCK.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    return lock


def check() -> list[str]:
    """Problems of the committed files against the lock and the pins (empty: all good)."""
    if not LOCK.exists():
        return [f"{LOCK}: missing; run scripts/vendor_ui.py"]
    lock = json.loads(LOCK.read_text())
    problems = []
    for name, version, files in PINS:
        entry = lock["packages"].get(name)
        if entry is None or entry["version"] != version:
            problems.append(f"{name}: lock has {entry and entry['version']}, pinned {version}; run scripts/vendor_ui.py")
            continue
        for out_name in files.values():
            path = VENDOR / out_name
            if not path.exists():
                problems.append(f"{path}: missing")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != entry["files"][out_name]["sha256"]:
                problems.append(f"{path}: sha256 differs from {LOCK.name}")
    return problems


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        issues = check()
        print("\n".join(issues) or "vendored files match the lock")
        sys.exit(1 if issues else 0)
    fetch()
