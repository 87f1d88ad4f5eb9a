"""The console's store of captured samples (issue 17): chunk assembly, content-addressed files,
an index table, labels and the export ``edgeops build`` reads.

Devices upload each sealed sample in chunks on ``edgeops/v1/{d}/capture``
(:mod:`edgeops.agent.capture_upload`). :class:`CaptureStore` writes each chunk under
``partial/{device}/{sample_id}/`` as it comes (idempotent: a chunk sent twice is written
twice to the same file), and when every chunk is there checks the whole against its sha256
(the sample id), opens it with the console's capture private key, checks the record inside
names the device whose topic (and broker identity) it came on, and stores the *sealed* bytes
at ``objects/{id[:2]}/{id}`` with a row in the ``capture_samples`` table. Only then does it
answer ``stored`` on ``capture/ack``; a sample stored before is answered ``stored`` again and
never stored twice (primary key: the sample id). Samples stay sealed at rest: reading them
(``edgeops data show|export``) needs the private key, and deleting the key destroys every
stored sample at once.

The table lives next to fleet/db.py's (same prefix, same PostgreSQL schema) and is created
when missing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import sqlalchemy as sa

from edgeops.errors import FleetError
from edgeops.fleet.db import Database
from edgeops.protocol import CaptureAck, capture_ack_topic, decode_capture_chunk, parse_topic

log = logging.getLogger("edgeops.fleet.capture")

PublishFn = Callable[[str, bytes], object]
MAX_PARTIAL_AGE_S = 7 * 86400  # partial uploads untouched this long are removed by prune_partial()
MAX_PARTIAL_PER_DEVICE = 16  # unfinished uploads kept per device; a new one beyond it drops the oldest
MAX_SAMPLE_BYTES = 64 << 20  # a sealed sample larger than this is refused (a device's own bound is its spool)


class CaptureDataError(FleetError):
    """A capture query, label file or export the store cannot honour; the message says why."""


def capture_table(db: Database) -> sa.Table:
    """The ``capture_samples`` index table, with fleet/db.py's prefix and schema."""
    prefix = db.t.devices.name[: -len("devices")]
    md = sa.MetaData(schema=db.schema)
    S = sa.String
    return sa.Table(
        f"{prefix}capture_samples",
        md,
        sa.Column("sample_id", S(64), primary_key=True),
        sa.Column("device_id", S(64), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("trigger", S(64), nullable=False),
        sa.Column("model_name", S(128)),
        sa.Column("model_version", S(64)),
        sa.Column("model_sha256", S(64)),
        sa.Column("rollout_id", S(128)),
        sa.Column("policy_id", S(128)),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("tensors", sa.Text, nullable=False, default="{}"),  # name -> {shape, dtype}
        sa.Column("label", sa.BigInteger),
        sa.Index(f"{prefix}ix_capture_received", "received_at"),
        sa.Index(f"{prefix}ix_capture_device", "device_id", "ts"),
    )


def default_capture_dir(config) -> Path:
    """Where a console keeps its captured samples and capture key: ``capture/`` next to fleet.toml."""
    return config.path("capture")


def open_sample(private_key, blob: bytes) -> dict[str, np.ndarray]:
    """Open a sealed sample with the console's capture private key: arrays by npz name."""
    from nacl.public import SealedBox

    plain = SealedBox(private_key).decrypt(blob)
    with np.load(io.BytesIO(plain), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def sample_meta(arrays: dict[str, np.ndarray]) -> dict:
    """The sample's ``meta`` record."""
    return json.loads(arrays["meta"].tobytes())


@dataclass
class Received:
    """What one chunk led to (for tests and counters)."""

    status: str  # "partial", "stored", "duplicate", "refused", "malformed", "foreign"
    sample_id: str | None = None


class CaptureStore:
    """Chunk assembly, the content-addressed store and the index (see module doc)."""

    def __init__(self, db: Database, folder: Path, private_key, publish: PublishFn | None = None, clock: Callable[[], float] = time.time,
                 known_device: Callable[[str], bool] | None = None):
        self.db = db
        self.folder = Path(folder)
        self.objects = self.folder / "objects"
        self.partial = self.folder / "partial"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir(parents=True, exist_ok=True)
        self.private_key = private_key
        self.publish = publish
        self.clock = clock
        # Another fleet's console on the same broker sees this fleet's chunks too; answering
        # them "refused" (it cannot open them) made the device drop samples its own console
        # was storing. Chunks of devices not enrolled here are left alone: no answer, nothing kept.
        self.known_device = known_device
        self.table = capture_table(db)
        self.table.metadata.create_all(db.engine)
        self._lock = threading.Lock()
        self.counts = {"chunks": 0, "stored": 0, "duplicates": 0, "refused": 0, "malformed": 0, "foreign": 0}

    def object_path(self, sample_id: str) -> Path:
        """Where a stored sample's sealed bytes are."""
        return self.objects / sample_id[:2] / sample_id

    def _answer(self, device_id: str, ack: CaptureAck) -> None:
        if self.publish is not None:
            self.publish(capture_ack_topic(device_id), ack.to_json().encode())

    def _stored(self, sample_id: str) -> bool:
        with self.db.connect() as conn:
            return conn.execute(sa.select(self.table.c.sample_id).where(self.table.c.sample_id == sample_id)).first() is not None

    def handle(self, topic: str, payload: bytes, ack: Callable[[], None] | None = None) -> Received:
        """One chunk from ``edgeops/v1/{d}/capture``; the MQTT ``ack`` is given once it is on disk.

        Malformed chunks are counted and dropped (acknowledged: sending them again will not
        mend them); never raises."""
        try:
            return self._handle(topic, payload)
        except Exception:  # noqa: BLE001 (a chunk never kills the network thread; the device sends it again)
            log.exception("capture chunk on %s failed", topic)
            return Received("error")
        finally:
            if ack is not None:
                ack()

    def _handle(self, topic: str, payload: bytes) -> Received:
        parsed = parse_topic(topic)
        decoded = decode_capture_chunk(payload) if parsed and parsed[1] == "capture" else None
        if decoded is None:
            self.counts["malformed"] += 1
            return Received("malformed")
        device_id = parsed[0]  # type: ignore[index]
        if self.known_device is not None and not self.known_device(device_id):
            self.counts["foreign"] += 1
            return Received("foreign")
        head, chunk = decoded
        sid = head.sample_id
        with self._lock:
            self.counts["chunks"] += 1
            if self._stored(sid):
                self.counts["duplicates"] += 1
                self._answer(device_id, CaptureAck(sample_id=sid, status="stored"))
                return Received("duplicate", sid)
            part = self.partial / device_id / sid
            if head.size > MAX_SAMPLE_BYTES:
                return self._refuse(device_id, sid, part, f"{head.size} bytes, over the console's bound of {MAX_SAMPLE_BYTES} per sample")
            if not part.exists():
                self._bound_partials(part.parent)
            part.mkdir(parents=True, exist_ok=True)
            (part / f"{head.index:05d}.tmp").write_bytes(chunk)
            os.replace(part / f"{head.index:05d}.tmp", part / f"{head.index:05d}")
            have = {int(p.name) for p in part.iterdir() if p.name.isdigit()}
            missing = [i for i in range(head.total) if i not in have]
            if missing:
                if head.index == head.total - 1:  # the last chunk came and some did not: ask for them
                    self._answer(device_id, CaptureAck(sample_id=sid, status="missing", missing=missing))
                return Received("partial", sid)
            blob = b"".join((part / f"{i:05d}").read_bytes() for i in range(head.total))
            return self._complete(device_id, sid, blob, head.size, head.total, part)

    def _bound_partials(self, device_dir: Path) -> None:
        """Keep at most MAX_PARTIAL_PER_DEVICE - 1 unfinished uploads of a device before a new
        one starts (oldest first): a device cannot fill the console's disk with uploads it never
        finishes. An honest device has ``capture.max_inflight`` (default 2) open at a time."""
        if not device_dir.exists():
            return
        parts = sorted(device_dir.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in parts[: max(0, len(parts) - MAX_PARTIAL_PER_DEVICE + 1)]:
            shutil.rmtree(old, ignore_errors=True)

    def _refuse(self, device_id: str, sid: str, part: Path, why: str) -> Received:
        self.counts["refused"] += 1
        log.warning("capture sample %s from %s refused: %s", sid[:12], device_id, why)
        shutil.rmtree(part, ignore_errors=True)
        self._answer(device_id, CaptureAck(sample_id=sid, status="refused", detail=why[:1000]))
        return Received("refused", sid)

    def _complete(self, device_id: str, sid: str, blob: bytes, size: int, total: int, part: Path) -> Received:
        if len(blob) != size or hashlib.sha256(blob).hexdigest() != sid:
            # chunks of two different uploads under one id cannot happen with honest devices;
            # start over rather than store what does not hash to its name
            shutil.rmtree(part, ignore_errors=True)
            self._answer(device_id, CaptureAck(sample_id=sid, status="missing", missing=list(range(total))))
            return Received("partial", sid)
        try:
            arrays = open_sample(self.private_key, blob)
            meta = sample_meta(arrays)
        except Exception as e:  # noqa: BLE001 (not sealed to our key, not an npz, no meta)
            return self._refuse(device_id, sid, part, f"cannot open the sample with this console's capture key ({type(e).__name__}); was the policy's public key this console's?")
        if meta.get("device_id") != device_id:
            return self._refuse(device_id, sid, part, f"the sample names device {meta.get('device_id')!r} but came from {device_id!r}")
        tensors = {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in arrays.items() if k != "meta"}
        model = meta.get("model") or {}
        path = self.object_path(sid)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        row = dict(
            sample_id=sid, device_id=device_id, ts=float(meta.get("ts") or 0.0), received_at=self.clock(), trigger=str(meta.get("trigger") or "")[:64],
            model_name=(model.get("name") or None), model_version=(model.get("version") or None), model_sha256=(model.get("sha256") or None),
            rollout_id=meta.get("rollout_id"), policy_id=meta.get("policy_id"), size=len(blob), tensors=json.dumps(tensors, sort_keys=True),
        )
        with self.db.begin() as conn:
            new = self.db.insert_ignore_returning(conn, self.table, [row], ["sample_id"])
        shutil.rmtree(part, ignore_errors=True)
        if new:
            self.counts["stored"] += 1
        else:
            self.counts["duplicates"] += 1
        self._answer(device_id, CaptureAck(sample_id=sid, status="stored"))
        return Received("stored" if new else "duplicate", sid)

    def prune_partial(self, max_age_s: float = MAX_PARTIAL_AGE_S) -> int:
        """Remove partial uploads untouched for ``max_age_s`` (a device that never came back)."""
        removed = 0
        cutoff = time.time() - max_age_s
        for device in self.partial.iterdir() if self.partial.exists() else []:
            for part in device.iterdir():
                if part.stat().st_mtime < cutoff:
                    shutil.rmtree(part, ignore_errors=True)
                    removed += 1
        return removed


# -- reading the store: list, show, label, export -------------------------------------------------
@dataclass
class SampleFilter:
    """Which stored samples a query takes (every given condition must hold).

    ``since``: received at or after (unix time); ``version``: ``VERSION`` or ``NAME@VERSION`` of
    the model that served it; ``trigger``; ``device``; ``tag``: ``KEY=VALUE`` of the device's
    tags; ``labelled``: only samples with a label."""

    since: float | None = None
    version: str | None = None
    trigger: str | None = None
    device: str | None = None
    tag: str | None = None
    labelled: bool = False


def list_samples(db: Database, flt: SampleFilter | None = None, limit: int | None = None) -> list[dict]:
    """Index rows matching ``flt``, oldest first (by capture time, then id: a stable order)."""
    flt = flt or SampleFilter()
    t = capture_table(db)
    q = sa.select(t).order_by(t.c.ts, t.c.sample_id)
    if flt.since is not None:
        q = q.where(t.c.received_at >= flt.since)
    if flt.version:
        name, sep, version = flt.version.rpartition("@")
        q = q.where(t.c.model_version == version)
        if sep:
            q = q.where(t.c.model_name == name)
    if flt.trigger:
        q = q.where(t.c.trigger == flt.trigger)
    if flt.device:
        q = q.where(t.c.device_id == flt.device)
    if flt.labelled:
        q = q.where(t.c.label.is_not(None))
    with db.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q)]
        if flt.tag:
            key, sep, value = flt.tag.partition("=")
            if not sep:
                raise CaptureDataError(f"--tag {flt.tag!r}: expected KEY=VALUE (e.g. site=north)")
            d = db.t.devices
            tagged = {i for i, text in conn.execute(sa.select(d.c.id, d.c.tags)) if (json.loads(text or "{}") or {}).get(key) == value}
            rows = [r for r in rows if r["device_id"] in tagged]
    for r in rows:
        r["tensors"] = json.loads(r["tensors"] or "{}")
    return rows[:limit] if limit is not None else rows


def read_sample(folder: Path, private_key, sample_id: str) -> dict[str, np.ndarray]:
    """A stored sample's arrays (``in/<name>``, ``out/<name>``, ``meta``), opened with the key."""
    path = Path(folder) / "objects" / sample_id[:2] / sample_id
    try:
        blob = path.read_bytes()
    except FileNotFoundError as e:
        raise CaptureDataError(f"sample {sample_id}: not in the store ({path}); list samples with `edgeops data list`") from e
    if hashlib.sha256(blob).hexdigest() != sample_id:
        raise CaptureDataError(f"sample {sample_id}: {path} does not hash to its name (the file was changed on disk)")
    return open_sample(private_key, blob)


def find_sample(db: Database, prefix: str) -> dict:
    """The index row of the one sample whose id starts with ``prefix`` (at least 8 hex digits)."""
    if len(prefix) < 8 or any(c not in "0123456789abcdef" for c in prefix):
        raise CaptureDataError(f"sample id {prefix!r}: give at least 8 hex digits of it (see `edgeops data list`)")
    t = capture_table(db)
    with db.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(t).where(t.c.sample_id.like(prefix + "%")).limit(2))]
    if not rows:
        raise CaptureDataError(f"sample {prefix}: no stored sample has that id")
    if len(rows) > 1:
        raise CaptureDataError(f"sample {prefix}: more than one stored sample starts with it; give more digits")
    rows[0]["tensors"] = json.loads(rows[0]["tensors"] or "{}")
    return rows[0]


def import_labels(db: Database, csv_path: Path) -> int:
    """Set labels from a CSV of ``sample_id,label`` rows (a header row is allowed; ids may be
    unique prefixes of 8+ hex digits; labels are integers). All or nothing: any bad row is a
    CaptureDataError naming its line, and nothing is written. Returns how many were set."""
    csv_path = Path(csv_path)
    try:
        text = csv_path.read_text()
    except OSError as e:
        raise CaptureDataError(f"{csv_path}: cannot read ({e.strerror or e})") from e
    updates: dict[str, int] = {}
    for n, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise CaptureDataError(f"{csv_path}:{n}: expected 2 columns (sample_id,label), got {len(row)}")
        sid, label = row[0].strip(), row[1].strip()
        if n == 1 and not label.lstrip("-").isdigit():
            continue  # a header
        try:
            value = int(label)
        except ValueError as e:
            raise CaptureDataError(f"{csv_path}:{n}: label {label!r} is not an integer class index") from e
        try:
            sid = find_sample(db, sid)["sample_id"]
        except CaptureDataError as e:
            raise CaptureDataError(f"{csv_path}:{n}: {e}") from e
        updates[sid] = value
    t = capture_table(db)
    with db.begin() as conn:
        for sid, value in updates.items():
            conn.execute(t.update().where(t.c.sample_id == sid).values(label=value))
    return len(updates)


@dataclass
class Export:
    """What ``export`` wrote: the path, its sha256 (what a build's manifest records for it),
    the samples and rows it holds and whether it carries labels."""

    path: Path
    sha256: str
    samples: int
    rows: int
    labels: bool
    sample_ids: list[str]


def export_samples(db: Database, folder: Path, private_key, out: Path, flt: SampleFilter | None = None, with_labels: bool | None = None) -> Export:
    """Write the matching samples' inputs as ``edgeops build --calibration/--validation`` reads them.

    ``out`` ending in ``.npz``: one array per input, the samples' feeds concatenated on the
    batch axis (axis 0), plus ``labels`` (int64, one per row: a sample's label for each row of
    its feed) when every sample is labelled (``with_labels`` None) or when asked (True: unlabelled
    samples are an error). Otherwise ``out`` is a folder with one ``{sample_id}.npz`` feed per
    sample (arrays shaped exactly like the input), the folder form ``edgeops build`` reads.
    Order: capture time, then id, so the same store and filter always write the same arrays.
    """
    from edgeops.bundle import sha256_file

    rows = list_samples(db, flt)
    if not rows:
        raise CaptureDataError("no stored sample matches the filter; see `edgeops data list`")
    labelled = all(r["label"] is not None for r in rows)
    if with_labels and not labelled:
        missing = [r["sample_id"][:12] for r in rows if r["label"] is None]
        raise CaptureDataError(f"{len(missing)} of {len(rows)} samples have no label (e.g. {', '.join(missing[:3])}); label them with `edgeops data label labels.csv` or filter with --labelled")
    use_labels = labelled if with_labels is None else with_labels
    feeds: list[dict[str, np.ndarray]] = []
    for r in rows:
        arrays = read_sample(folder, private_key, r["sample_id"])
        feeds.append({k[3:]: v for k, v in arrays.items() if k.startswith("in/")})
    names = sorted(feeds[0])
    for r, f in zip(rows, feeds):
        if sorted(f) != names:
            raise CaptureDataError(f"sample {r['sample_id'][:12]} has inputs {sorted(f)}, others {names}: export one model's samples at a time (--version)")
    out = Path(out)
    if out.suffix == ".npz":
        try:
            arrays = {n: np.concatenate([f[n] for f in feeds], axis=0) for n in names}
        except ValueError as e:
            raise CaptureDataError(f"the samples' inputs do not stack on the batch axis ({e}); export one model's samples at a time (--version) or to a folder") from e
        rows_per = [len(f[names[0]]) if f[names[0]].ndim else 1 for f in feeds]
        if use_labels:
            arrays["labels"] = np.concatenate([np.full(n, r["label"], dtype=np.int64) for r, n in zip(rows, rows_per)])
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(out, **arrays)
        total = sum(rows_per)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for r, f in zip(rows, feeds):
            extra = {"labels": np.asarray(r["label"], dtype=np.int64)} if use_labels else {}
            np.savez(out / f"{r['sample_id']}.npz", **f, **extra)
        total = len(feeds)
    sha = sha256_file(out) if out.is_file() else _folder_sha256(out)
    return Export(out, sha, len(rows), total, use_labels, [r["sample_id"] for r in rows])


def _folder_sha256(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.npz")):
        h.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()
