"""Look up a bundle's signed TUF target in the console's own repository.

An assignment must name a TUF target exactly (path, sha256, length), so the console reads
them from the newest targets metadata of the repository it serves, following
timestamp -> snapshot -> targets the way a client does (falling back to the highest
``N.targets.json`` or ``targets.json``). The console signed this metadata itself, so it is
read, not verified; devices verify it.

A target is the device side's :class:`~edgeops.trust.targets.TargetRecord` (``name`` is the
target path), and the path convention is :func:`edgeops.trust.targets.target_path`: bundle ``N``
at version ``V`` is the target ``N/V/N-V.bundle`` (further profiles of the version:
``N/V/PROFILE/N-V.bundle``). Both have their one home there; :func:`find_targets` gives a
version's targets by the profile each is built for.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from edgeops.errors import FleetError
from edgeops.trust.errors import MalformedMetadataError
from edgeops.trust.targets import TargetRecord, parse_target_path, target_path, target_record


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
    """(bundle, version) of every bundle target (``N/V/N-V.bundle``, or ``N/V/PROFILE/N-V.bundle``
    for a further profile of a version) in :func:`list_targets`' answer."""
    return {(p[0], p[1]) for path in targets if (p := parse_target_path(path)) is not None}


def version_targets(targets: dict[str, TargetRecord], name: str, version: str) -> dict[str, TargetRecord]:
    """The targets of ``name@version`` by the profile each is built for (its signed
    ``custom.profile``), from :func:`list_targets`' answer; the plain path first when two claim
    one profile (the publisher never signs that)."""
    out: dict[str, TargetRecord] = {}
    for path, record in sorted(targets.items(), key=lambda kv: kv[0].count("/")):
        parsed = parse_target_path(path)
        if parsed is None or parsed[:2] != (name, version) or record.bundle_name != name or record.version != version:
            continue
        if parsed[2] is not None and parsed[2] != record.profile:
            continue  # a path naming one profile, signed for another: not a target of either
        out.setdefault(record.profile, record)
    return out


def _unknown(targets: dict[str, TargetRecord], name: str, version: str) -> UnknownBundleError:
    known = sorted({f"{n}@{v}" for n, v in published_versions(targets)})
    return UnknownBundleError(
        # no filesystem path: the REST API shows this message to its clients
        f"bundle {name}@{version}: not a signed target of the console's repository (target {target_path(name, version)}); "
        f"published: {', '.join(known[:10]) or 'none'}; publish it with `edgeops publish`"
    )


def find_target(repo_dir: str | Path, name: str, version: str) -> TargetRecord:
    """The signed target of ``name@version`` at the plain path; UnknownBundleError when the repository lacks it."""
    targets = list_targets(repo_dir)
    path = target_path(name, version)
    if path not in targets:
        raise _unknown(targets, name, version)
    return targets[path]


def find_targets(repo_dir: str | Path, name: str, version: str) -> dict[str, TargetRecord]:
    """Every signed target of ``name@version`` by profile (:func:`version_targets`);
    UnknownBundleError when the repository has none."""
    targets = list_targets(repo_dir)
    found = version_targets(targets, name, version)
    if not found:
        raise _unknown(targets, name, version)
    return found
