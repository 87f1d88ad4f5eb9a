"""Look up a bundle's signed TUF target in the console's own repository.

An assignment must name a TUF target exactly (path, sha256, length), so the console reads
them from the newest targets metadata of the repository it serves, following
timestamp -> snapshot -> targets the way a client does (falling back to the highest
``N.targets.json`` or ``targets.json``). The console signed this metadata itself, so it is
read, not verified; devices verify it.

A target is the device side's :class:`~edgeops.trust.targets.TargetRecord` (``name`` is the
target path), and the path convention is :func:`edgeops.trust.targets.target_path`: bundle ``N``
at version ``V`` is the target ``N/V/N-V.bundle``. Both have their one home there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from edgeops.errors import FleetError
from edgeops.trust.errors import MalformedMetadataError
from edgeops.trust.targets import TargetRecord, target_path, target_record


class UnknownBundleError(FleetError):
    """The repository's targets metadata does not list the bundle."""


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise FleetError(f"{path}: cannot read TUF metadata ({e})") from e


def targets_metadata_path(repo_dir: str | Path) -> Path:
    """The newest targets metadata file of a repository folder."""
    meta = Path(repo_dir) / "metadata"
    ts = meta / "timestamp.json"
    if ts.exists():
        try:
            snap_v = _load(ts)["signed"]["meta"]["snapshot.json"]["version"]
            snap = meta / f"{snap_v}.snapshot.json"
            if not snap.exists():
                snap = meta / "snapshot.json"
            targets_v = _load(snap)["signed"]["meta"]["targets.json"]["version"]
            path = meta / f"{targets_v}.targets.json"
            if path.exists():
                return path
        except (KeyError, TypeError, FleetError):
            pass
    numbered = sorted(
        ((int(m.group(1)), p) for p in meta.glob("*.targets.json") if (m := re.match(r"^(\d+)\.targets\.json$", p.name))),
        reverse=True,
    )
    if numbered:
        return numbered[0][1]
    if (meta / "targets.json").exists():
        return meta / "targets.json"
    raise FleetError(f"{meta}: no targets metadata; publish a bundle with `edgeops publish` first")


def list_targets(repo_dir: str | Path) -> dict[str, TargetRecord]:
    """Every target of the newest targets metadata, by path (a malformed entry is left out)."""
    data = _load(targets_metadata_path(repo_dir))
    out: dict[str, TargetRecord] = {}
    for path, info in (data.get("signed", {}).get("targets") or {}).items():
        try:
            out[path] = target_record(path, int(info["length"]), dict(info["hashes"]), info.get("custom"))
        except (KeyError, TypeError, ValueError, AttributeError, MalformedMetadataError):
            continue
    return out


def published_versions(targets: dict[str, TargetRecord]) -> set[tuple[str, str]]:
    """(bundle, version) of every bundle target (``N/V/N-V.bundle``) in :func:`list_targets`' answer."""
    out = set()
    for path in targets:
        parts = path.split("/")
        if len(parts) == 3 and path == target_path(parts[0], parts[1]):
            out.add((parts[0], parts[1]))
    return out


def find_target(repo_dir: str | Path, name: str, version: str) -> TargetRecord:
    """The signed target of ``name@version``; UnknownBundleError when the repository lacks it."""
    path = target_path(name, version)
    targets = list_targets(repo_dir)
    if path not in targets:
        known = sorted(p.split("/")[0] + "@" + p.split("/")[1] for p in targets if p.count("/") == 2)
        raise UnknownBundleError(
            # no filesystem path: the REST API shows this message to its clients
            f"bundle {name}@{version}: not a signed target of the console's repository (target {path}); "
            f"published: {', '.join(known[:10]) or 'none'}; publish it with `edgeops publish`"
        )
    return targets[path]
