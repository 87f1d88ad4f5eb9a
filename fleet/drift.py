"""Drift scores of the fleet: the devices' sketches merged per device, cohort or version and
scored against the reference in each bundle's manifest (:mod:`edgeops.sketch`).

Ingest stores the sketches of every telemetry batch (table ``sketches``, one row per batch);
a question names a window (sketches *received* in the last ``window_s`` seconds, the console's
clock) and a grouping:

- ``version``: per bundle version (name@version), every device that ran it;
- ``device``: per device and version;
- ``profile``: per device profile (the cohort of a hardware class) and version;
- ``tag``: per tag ``key=value`` of the devices and version (a device with 3 tags counts in 3 groups).

Each group's states are merged per tensor (exactly, see the sketch module) and scored against
the reference of the version the devices ran: PSI, KS distance and p-value, the sample count
(inferences), and a level from the ``[drift]`` thresholds of fleet.toml (``insufficient`` below
``min_samples``, ``alert``/``warn`` only when the KS p-value is also below ``alpha``). A
version with no reference (a bundle built without data, or not published in the console's
repository) is reported with ``reference: false`` and no score.

References are read from the bundles in the console's own TUF repository (the manifest is the
first member of the bundle tar) and cached per target sha256.
"""

from __future__ import annotations

import json
import logging
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

from edgeops.bundle import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest
from edgeops.errors import BundleError, FleetError
from edgeops.fleet.config import DriftConfig
from edgeops.fleet.db import Database
from edgeops.fleet.targets import list_targets
from edgeops.schema import SchemaError
from edgeops.sketch import Drift, Reference, SketchState, level, merge, score
from edgeops.trust.targets import target_file_path, target_path

log = logging.getLogger("edgeops.fleet.drift")

GROUPINGS = ("version", "device", "profile", "tag")
Grouping = Literal["version", "device", "profile", "tag"]
MAX_WINDOW_S = 30 * 86400.0
MAX_SKETCH_ROWS = 200_000  # batches one question merges at most (the newest); more: the answer says so


class ReferenceStore:
    """Bundle references (the manifest's ``monitoring``) from the console's repository, cached by target sha256."""

    def __init__(self, repo_dir: str | Path | None):
        self.repo_dir = Path(repo_dir) if repo_dir is not None else None
        self._lock = threading.Lock()
        self._cache: dict[str, Reference | None] = {}

    def get(self, name: str, version: str) -> Reference | None:
        """The reference of ``name@version``; None when unpublished, unreadable or built without one."""
        if self.repo_dir is None:
            return None
        try:
            record = list_targets(self.repo_dir).get(target_path(name, version))
        except FleetError:
            return None
        if record is None:
            return None
        with self._lock:
            if record.sha256 in self._cache:
                return self._cache[record.sha256]
        reference = self._read(self.repo_dir / target_file_path(record.name, record.sha256))
        with self._lock:
            self._cache[record.sha256] = reference
        return reference

    @staticmethod
    def _read(path: Path) -> Reference | None:
        # The console signed this target itself: the manifest is read, not verified (as targets.py reads metadata).
        try:
            with tarfile.open(path, mode="r:") as tar:
                member = tar.next()
                if member is None or member.name != MANIFEST_NAME or not member.isfile() or member.size > MAX_MANIFEST_BYTES:
                    raise BundleError(f"{path.name}: the first member is not {MANIFEST_NAME}")
                f = tar.extractfile(member)
                assert f is not None
                return Manifest.from_json_bytes(f.read(), source=f"{path.name}/{MANIFEST_NAME}").monitoring
        except (OSError, tarfile.TarError, BundleError, SchemaError) as e:
            log.warning("drift: cannot read the reference of %s: %s", path.name, e)
            return None


_STORES: dict[str, ReferenceStore] = {}
_STORES_LOCK = threading.Lock()


def reference_store(repo_dir: str | Path | None) -> ReferenceStore:
    """The process's ReferenceStore of ``repo_dir`` (one cache shared by the API, /metrics and the gates)."""
    key = str(Path(repo_dir).resolve()) if repo_dir is not None else ""
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is None:
            store = _STORES[key] = ReferenceStore(repo_dir)
        return store


@dataclass
class _Group:
    key: dict[str, str]
    name: str
    version: str
    devices: set[str]
    batches: int
    states: dict[str, SketchState]


def _fold(group: _Group, body: dict[str, Any]) -> None:
    for tensor, raw in body.items():
        try:
            state = SketchState.parse(raw)
            group.states[tensor] = merge(group.states[tensor], state) if tensor in group.states else state
        except (SchemaError, ValueError):  # stored by an older layout of the same version: left out
            continue


def drift_report(
    db: Database,
    references: ReferenceStore,
    settings: DriftConfig,
    by: Grouping = "version",
    *,
    window_s: float | None = None,
    bundle: tuple[str, str | None] | None = None,
    device: str | None = None,
    tag: tuple[str, str] | None = None,
    profile: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Drift per group (see the module doc) over the sketches received in the window.

    Filters: ``bundle`` (name, version or None for any version), ``device``, ``tag`` (key, value),
    ``profile``. Returns ``{"by", "window_s", "thresholds", "groups": [...], "truncated"}``, the
    groups sorted by level (alert first), then PSI.
    """
    if by not in GROUPINGS:
        raise ValueError(f"by: {by!r} is not one of {', '.join(GROUPINGS)}")
    window = settings.window_s if window_s is None else window_s
    if not 0 < window <= MAX_WINDOW_S:
        raise ValueError(f"window_s: {window} is outside 0..{MAX_WINDOW_S:.0f} seconds")
    now = time.time() if now is None else now
    sk, dev = db.t.sketches, db.t.devices
    q = (
        sa.select(sk.c.device_id, sk.c.version_name, sk.c.version_version, sk.c.body, dev.c.profile, dev.c.tags)
        .select_from(sk.join(dev, dev.c.id == sk.c.device_id))
        .where(sk.c.received_at >= now - window)
        .order_by(sk.c.received_at.desc())
        .limit(MAX_SKETCH_ROWS + 1)
    )
    if bundle is not None:
        q = q.where(sk.c.version_name == bundle[0])
        if bundle[1] is not None:
            q = q.where(sk.c.version_version == bundle[1])
    if device is not None:
        q = q.where(sk.c.device_id == device)
    if profile is not None:
        q = q.where(dev.c.profile == profile)
    with db.connect() as conn:
        rows = conn.execute(q).all()
    truncated = len(rows) > MAX_SKETCH_ROWS
    groups: dict[tuple, _Group] = {}
    for device_id, name, version, body, dev_profile, tags_text in rows[:MAX_SKETCH_ROWS]:
        tags = _tags(tags_text)
        if tag is not None and tags.get(tag[0]) != tag[1]:
            continue
        if by == "version":
            keys = [{}]
        elif by == "device":
            keys = [{"device": device_id}]
        elif by == "profile":
            keys = [{"profile": dev_profile or ""}]
        else:
            keys = [{"tag": f"{k}={v}"} for k, v in sorted(tags.items())] if tag is None else [{"tag": f"{tag[0]}={tag[1]}"}]
        parsed = json.loads(body)
        for key in keys:
            gk = (tuple(sorted(key.items())), name, version)
            g = groups.get(gk)
            if g is None:
                g = groups[gk] = _Group(key, name, version, set(), 0, {})
            g.devices.add(device_id)
            g.batches += 1
            _fold(g, parsed)
    refs: dict[tuple[str, str], Reference | None] = {}  # one look-up per version, not per group
    for g in groups.values():
        if (g.name, g.version) not in refs:
            refs[g.name, g.version] = references.get(g.name, g.version)
    out = [_scored(g, refs[g.name, g.version], settings) for g in groups.values()]
    rank = {"alert": 0, "warn": 1, "ok": 2, "insufficient": 3, "no_reference": 4}
    out.sort(key=lambda r: (rank[r["level"]], -(r["psi"] or 0.0), r["bundle"], r["version"], json.dumps(r["group"], sort_keys=True)))
    return {
        "by": by,
        "window_s": window,
        "thresholds": settings.model_dump(),
        "groups": out,
        "truncated": truncated,
    }


def _tags(text: str | None) -> dict[str, str]:
    try:
        tags = json.loads(text or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


def _scored(g: _Group, reference: Reference | None, settings: DriftConfig) -> dict[str, Any]:
    base = {"group": g.key, "bundle": g.name, "version": g.version, "devices": len(g.devices), "batches": g.batches}
    if reference is None:
        samples = max((s.rows for s in g.states.values()), default=0)
        return {**base, "reference": False, "level": "no_reference", "samples": samples, "psi": None, "ks": None, "p_value": None, "tensors": {}}
    d = score(reference, g.states)
    return {**base, **drift_fields(d), "reference": True, "reference_source": reference.source, "level": level(d, settings.warn_psi, settings.alert_psi, settings.alpha, settings.min_samples)}


def drift_fields(d: Drift) -> dict[str, Any]:
    """The JSON figures of a score (rounded for reading; the sample counts exact)."""
    return {
        "samples": d.samples,
        "reference_samples": d.reference_samples,
        "psi": round(d.psi, 6),
        "ks": round(d.ks, 6),
        "p_value": float(f"{d.p_value:.6g}"),
        "tensors": {
            name: {"psi": round(t.psi, 6), "ks": round(t.ks, 6), "p_value": float(f"{t.p_value:.6g}"), "samples": t.samples,
                   "mean_shift_sd": [round(v, 4) for v in t.mean_shift], "parts": {k: {m: round(v, 6) for m, v in p.items()} for k, p in t.parts.items()}}
            for name, t in d.tensors.items()
        },
        "skipped": d.skipped,
    }


def merged_states(db: Database, conn, devices: list[str], name: str, version: str, since: float) -> tuple[dict[str, SketchState], int]:
    """The states of ``devices`` on ``name@version`` received since ``since``, merged per tensor,
    and the batches read (the rollout gate's input)."""
    if not devices:
        return {}, 0
    sk = db.t.sketches
    group = _Group({}, name, version, set(), 0, {})
    for i in range(0, len(devices), 500):  # IN lists of a bounded length
        q = sa.select(sk.c.body).where(sk.c.device_id.in_(devices[i : i + 500]), sk.c.version_name == name, sk.c.version_version == version, sk.c.received_at >= since)
        for (body,) in conn.execute(q.order_by(sk.c.received_at.desc()).limit(MAX_SKETCH_ROWS)):
            group.batches += 1
            _fold(group, json.loads(body))
    return group.states, group.batches


def level_value(name: str) -> float:
    """The /metrics value of a level: 0 ok, 1 warn, 2 alert, -1 insufficient samples."""
    return {"ok": 0.0, "warn": 1.0, "alert": 2.0}.get(name, -1.0)

