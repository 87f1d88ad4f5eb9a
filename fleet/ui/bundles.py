"""The Bundles page's data: every bundle target of the console's repository with the manifest,
build report (report.json: gates, latency, size) and provenance read from the signed bundle file.

Bundles are immutable (a target is named by its sha256), so what was read is kept by hash.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from edgeops.fleet.targets import list_targets, published_versions
from edgeops.trust.targets import target_path

_CACHE: dict[str, dict] = {}
_LOCK = threading.Lock()
MAX_READ_BYTES = 512 * 1024 * 1024  # a bundle larger than this is listed without its contents


def _bundle_file(repo_dir: Path, path: str, sha256: str) -> Path | None:
    folder = repo_dir / "targets" / Path(path).parent
    for candidate in (repo_dir / "targets" / path, folder / f"{sha256}.{Path(path).name}"):
        if candidate.is_file():
            return candidate
    return next(iter(sorted(folder.glob(f"*{Path(path).name}"))), None) if folder.is_dir() else None


def _contents(file: Path, sha256: str, length: int) -> dict:
    with _LOCK:
        if sha256 in _CACHE:
            return _CACHE[sha256]
    from edgeops.bundle import REPORT_NAME, read_bundle

    if length > MAX_READ_BYTES:
        out = {"error": f"{length} bytes: too large to show here (edgeops inspect reads it)"}
    else:
        try:
            b = read_bundle(file)
            manifest = json.loads(b.manifest.to_json())
            report = json.loads(b.files[REPORT_NAME]) if REPORT_NAME in b.files else None
            out = {"manifest": manifest, "build_report": report, "provenance": manifest.get("provenance")}
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
        path = target_path(name, version)
        t = targets[path]
        sha = t.sha256
        item = {"ref": f"{name}@{version}", "target": path, "length": t.length, "sha256": sha}
        file = _bundle_file(repo_dir, path, sha)
        item.update(_contents(file, sha, t.length) if file else {"error": "bundle file not found in the repository folder"})
        out.append(item)
    return out


def bundle_refs(repo_dir: str | Path) -> list[str]:
    """NAME@VERSION of every published bundle (form choices)."""
    try:
        return [f"{n}@{v}" for n, v in sorted(published_versions(list_targets(repo_dir)))]
    except Exception:  # noqa: BLE001 (no repository yet)
        return []
