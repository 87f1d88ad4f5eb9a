"""The Bundles page's data: every bundle target of the console's repository with the manifest,
build report (report.json: gates, latency, size) and provenance read from the signed bundle file.

Only manifest.json and report.json are read (never the model), after the whole file hashed to the
signed target's sha256. Bundles are immutable (a target is named by its sha256), so what was read
is kept by hash.
"""

from __future__ import annotations

import json
import tarfile
import threading
from pathlib import Path

from edgeops.fleet.targets import list_targets, published_versions, version_targets

_CACHE: dict[str, dict] = {}
_LOCK = threading.Lock()
MAX_REPORT_BYTES = 4 * 1024 * 1024  # a build report larger than this is not shown


def _bundle_file(repo_dir: Path, path: str, sha256: str) -> Path | None:
    folder = repo_dir / "targets" / Path(path).parent
    for candidate in (repo_dir / "targets" / path, folder / f"{sha256}.{Path(path).name}"):
        if candidate.is_file():
            return candidate
    return next(iter(sorted(folder.glob(f"*{Path(path).name}"))), None) if folder.is_dir() else None


def _read_members(file: Path, sha256: str) -> dict:
    """Manifest and build report of a bundle file, read without loading the model: the whole file
    must hash to the signed target's sha256, and report.json to the manifest's entry for it."""
    import hashlib

    from edgeops.bundle import MANIFEST_NAME, MAX_MANIFEST_BYTES, REPORT_NAME, Manifest

    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != sha256:
        return {"error": "the bundle file does not match its signed target's sha256"}
    with tarfile.open(file, mode="r:") as tar:
        member = tar.getmember(MANIFEST_NAME)
        if member.size > MAX_MANIFEST_BYTES:
            return {"error": f"{MANIFEST_NAME} larger than {MAX_MANIFEST_BYTES} bytes"}
        manifest = Manifest.parse_json(tar.extractfile(member).read())
        report = None
        entry = manifest.files.get(REPORT_NAME)
        if entry is not None and entry.size <= MAX_REPORT_BYTES:
            raw = tar.extractfile(tar.getmember(REPORT_NAME)).read()
            if hashlib.sha256(raw).hexdigest() == entry.sha256:
                report = json.loads(raw)
    data = json.loads(manifest.to_json())
    return {"manifest": data, "build_report": report, "provenance": data.get("provenance")}


def _contents(file: Path, sha256: str) -> dict:
    with _LOCK:
        if sha256 in _CACHE:
            return _CACHE[sha256]
    try:
        out = _read_members(file, sha256)
    except Exception as e:  # noqa: BLE001 (a broken file is shown as such, the page still renders)
        out = {"error": f"cannot read the bundle: {e}"}
    with _LOCK:
        _CACHE[sha256] = out
    return out


def published_bundles(repo_dir: str | Path) -> list[dict]:
    """Bundles of the repository's targets metadata, newest version last per name."""
    repo_dir = Path(repo_dir)
    try:
        targets = list_targets(repo_dir)
    except Exception as e:  # noqa: BLE001 (no repository yet: an empty page that says why)
        return [{"ref": "none", "target": "-", "length": 0, "sha256": "", "error": str(e)}]
    out = []
    for name, version in sorted(published_versions(targets)):
        # one entry per hardware profile the version is built for (one target each)
        for profile, t in sorted(version_targets(targets, name, version).items()):
            path, sha = t.name, t.sha256
            item = {"ref": f"{name}@{version}", "target": path, "length": t.length, "sha256": sha, "profile": profile}
            file = _bundle_file(repo_dir, path, sha)
            item.update(_contents(file, sha) if file else {"error": "bundle file not found in the repository folder"})
            out.append(item)
    return out


def bundle_refs(repo_dir: str | Path) -> list[str]:
    """NAME@VERSION of every published bundle (form choices)."""
    try:
        return [f"{n}@{v}" for n, v in sorted(published_versions(list_targets(repo_dir)))]
    except Exception:  # noqa: BLE001 (no repository yet)
        return []
