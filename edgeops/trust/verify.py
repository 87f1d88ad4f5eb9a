"""The one bundle reader: a single streaming pass checks the signed target and every member.

A full check of a bundle needs two digests over the same bytes: the sha256 of the whole file
(what the TUF targets role signs) and the sha256 of each member (what the bundle manifest
lists). The file is read once in large blocks: the whole-file hash runs on a worker thread
(hashlib releases the GIL on large buffers) while :class:`BundleScanner` — a small incremental
USTAR parser, pure and I/O-free — routes the same blocks into the per-member hashes on the
calling thread and, when given a :class:`MemberSink`, hands each member's bytes to it as they
stream past. That is how the agent installs (RAUC's model: check once, install what was
checked): :func:`extract_verified` writes the members into the store's staging folder during
the one pass and removes the folder on any error, so a bundle that fails any check leaves
nothing behind; installing is then one rename. :func:`verify_bundle_file` is the same pass
with no destination (``edgeops verify``, publishing), and :func:`edgeops.bundle.read_bundle`
/ :func:`edgeops.bundle.extract_bundle` are this reader too (inspect, the packager's tests).

The scanner accepts exactly what :func:`edgeops.bundle.write_bundle` writes: USTAR headers of
regular files, ``manifest.json`` first, every other member listed in the manifest with the
listed size and sha256 (whatever regular files the manifest lists: model, external data,
golden vectors, report), then the end-of-archive marker and zero padding. Links, devices,
PAX/GNU extension headers, absolute or ``..`` names, duplicates, unlisted or missing members,
and anything after the end marker that is not zero are refused with BundleError.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Protocol

from edgeops.bundle import DEFAULT_MAX_TOTAL_BYTES, MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, _check_member_name
from edgeops.errors import BundleError
from edgeops.trust import errors
from edgeops.trust.targets import TargetRecord, bundle_target_paths

if TYPE_CHECKING:
    from _hashlib import HASH

BLOCK = 512
READ_BYTES = 4 << 20
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)


class MemberSink(Protocol):
    """Where the scanner hands each member's bytes while it checks them (nothing for the manifest)."""

    def begin(self, name: str, size: int) -> None:
        """A member starts (its header matched the manifest's name and size)."""

    def write(self, data: memoryview) -> None:
        """The next bytes of the current member (not yet known to be good)."""

    def end(self) -> None:
        """The current member ended and its sha256 matched the manifest."""


class FolderSink:
    """Writes members under ``dest`` (which must exist): each file created exclusively,
    fsynced and made read-only once its sha256 matched. On an error the caller removes
    ``dest``: a member whose hash did not match stays only until then."""

    def __init__(self, dest: Path):
        self.dest = Path(dest)
        self._out: BinaryIO | None = None
        self._path: Path | None = None

    def begin(self, name: str, size: int) -> None:
        """Create the member's file (and its folders)."""
        path = self.dest / name
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path, self._out = path, open(path, "xb")

    def write(self, data: memoryview) -> None:
        """Append to the member's file."""
        assert self._out is not None
        self._out.write(data)

    def end(self) -> None:
        """Make the checked member durable and read-only."""
        assert self._out is not None and self._path is not None
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()
        os.chmod(self._path, 0o444)
        self._out = None

    def close(self) -> None:
        """Close a member left open by an error."""
        if self._out is not None:
            self._out.close()
            self._out = None


class MemorySink:
    """Collects the members in memory (``files``: name -> bytes), for inspect and small bundles."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self._name = ""
        self._buf = bytearray()

    def begin(self, name: str, size: int) -> None:
        """Start collecting a member."""
        self._name, self._buf = name, bytearray()

    def write(self, data: memoryview) -> None:
        """Collect the next bytes."""
        self._buf += data

    def end(self) -> None:
        """Keep the checked member."""
        self.files[self._name] = bytes(self._buf)


@dataclass
class ScanResult:
    """What a scan established about a bundle's contents."""

    manifest: Manifest
    manifest_sha256: str
    members: list[str]


class BundleScanner:
    """Incremental checker of a bundle's internal consistency, fed with consecutive chunks.

    Pure: no I/O of its own (a ``sink`` receives each member's bytes as they pass).
    ``feed()`` raises BundleError as soon as the stream is wrong, so a bad bundle is refused
    without reading the rest; ``finish()`` checks completeness. ``on_manifest`` may refuse the
    bundle from its manifest alone (the store's space plan, the device's compatibility) before
    any member reaches the sink.
    """

    def __init__(self, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES, label: str = "bundle", sink: MemberSink | None = None, on_manifest: Callable[[Manifest], None] | None = None):
        self.max_total_bytes = max_total_bytes
        self.label = label
        self.sink = sink
        self.on_manifest = on_manifest  # called with the checked manifest before any member is read
        self._header = bytearray()
        self._name: str | None = None
        self._remaining = 0  # data bytes left in the current member
        self._padding = 0  # padding bytes left after it
        self._hasher: HASH | None = None  # of the current member (not of the manifest)
        self._manifest_buf: bytearray | None = None
        self.manifest: Manifest | None = None
        self.manifest_sha256 = ""
        self._seen: list[str] = []
        self._total = 0
        self._zero_blocks = 0
        self._ended = False

    def _fail(self, message: str) -> BundleError:
        return BundleError(f"{self.label}: {message}")

    def feed(self, chunk: bytes | memoryview) -> None:
        """Consume the next bytes of the file."""
        view = memoryview(chunk).cast("B")
        pos, n = 0, len(view)
        while pos < n:
            if self._ended:
                if any(view[pos:]):
                    raise self._fail("data after the end-of-archive marker")
                return
            if self._remaining:
                take = min(self._remaining, n - pos)
                self._consume_data(view[pos : pos + take])
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._end_member()
                continue
            if self._padding:
                take = min(self._padding, n - pos)
                if any(view[pos : pos + take]):
                    raise self._fail(f"non-zero padding after member {self._name!r}")
                pos += take
                self._padding -= take
                continue
            take = min(BLOCK - len(self._header), n - pos)
            self._header += view[pos : pos + take]
            pos += take
            if len(self._header) == BLOCK:
                header = bytes(self._header)
                self._header.clear()
                self._on_header(header)

    def _consume_data(self, data: memoryview) -> None:
        if self._manifest_buf is not None:
            self._manifest_buf += data
        else:
            assert self._hasher is not None  # set by _on_header for every member after the manifest
            self._hasher.update(data)
            if self.sink is not None:
                self.sink.write(data)

    def _on_header(self, header: bytes) -> None:
        if header == bytes(BLOCK):
            self._zero_blocks += 1
            if self._zero_blocks == 2:
                self._ended = True
            return
        if self._zero_blocks:
            raise self._fail("a member after a zero block (truncated or spliced archive)")
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "strict")
        except (tarfile.HeaderError, ValueError, UnicodeError) as e:
            raise self._fail(f"corrupt tar header after {len(self._seen)} member(s): {e}") from e
        if info.type not in _REGULAR:
            raise self._fail(f"member {info.name!r} is not a regular file (type {info.type!r}; links, devices and extension headers are refused)")
        name = info.name
        _check_member_name(name)
        if name in self._seen:
            raise self._fail(f"member {name!r} appears twice")
        if info.size < 0:
            raise self._fail(f"member {name!r} has a negative size")
        self._seen.append(name)
        self._name = name
        self._remaining = info.size
        self._padding = (-info.size) % BLOCK
        if len(self._seen) == 1:
            if name != MANIFEST_NAME:
                raise self._fail(f"first member must be {MANIFEST_NAME}, found {name!r}")
            if info.size > MAX_MANIFEST_BYTES:
                raise self._fail(f"manifest.json is {info.size} bytes, over the {MAX_MANIFEST_BYTES} cap")
            self._manifest_buf = bytearray()
        else:
            entry = self.manifest.files.get(name) if self.manifest else None
            if entry is None:
                raise self._fail(f"member {name!r} is not listed in the manifest")
            if info.size != entry.size:
                raise self._fail(f"member {name!r} is {info.size} bytes, manifest says {entry.size}")
            self._total += info.size
            if self._total > self.max_total_bytes:
                raise self._fail(f"bundle exceeds the cap of {self.max_total_bytes} bytes")
            self._hasher = hashlib.sha256()
            if self.sink is not None:
                self.sink.begin(name, info.size)
        if not self._remaining:
            self._end_member()

    def _end_member(self) -> None:
        if self._manifest_buf is not None:
            raw = bytes(self._manifest_buf)
            self._manifest_buf = None
            self.manifest = Manifest.from_json_bytes(raw, f"{self.label}: manifest.json")
            self.manifest_sha256 = hashlib.sha256(raw).hexdigest()
            for name in self.manifest.files:
                _check_member_name(name)
            if MANIFEST_NAME in self.manifest.files:
                raise self._fail("the manifest lists itself")
            if self.manifest.artifact not in self.manifest.files:
                raise self._fail(f"manifest artifact {self.manifest.artifact!r} is not listed in files")
            declared = sum(e.size for e in self.manifest.files.values())
            if declared > self.max_total_bytes:
                raise self._fail(f"bundle declares {declared} bytes, over the cap of {self.max_total_bytes}")
            if self.on_manifest is not None:
                self.on_manifest(self.manifest)
            return
        # a member after the manifest: _on_header set all three
        assert self.manifest is not None and self._name is not None and self._hasher is not None
        entry = self.manifest.files[self._name]
        if self._hasher.hexdigest() != entry.sha256:
            raise self._fail(f"sha256 of {self._name!r} does not match the manifest (tampered or corrupt)")
        self._hasher = None
        if self.sink is not None:
            self.sink.end()

    def finish(self) -> ScanResult:
        """Check that the stream ended cleanly and every listed file was present."""
        if self._remaining or self._header or self._padding:
            raise self._fail("truncated bundle (ends inside a member)")
        if self.manifest is None:
            raise self._fail("empty bundle (no manifest.json)")
        if not self._ended:
            raise self._fail("truncated bundle (no end-of-archive marker)")
        missing = sorted(set(self.manifest.files) - set(self._seen))
        if missing:
            raise self._fail(f"files listed in the manifest are missing: {', '.join(missing)}")
        return ScanResult(self.manifest, self.manifest_sha256, list(self._seen))


@dataclass
class BundleVerdict:
    """A bundle file that passed :func:`verify_bundle_file`."""

    path: Path
    manifest: Manifest
    manifest_sha256: str
    sha256: str
    length: int
    target: TargetRecord | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form for ``--json`` output."""
        m = self.manifest
        return {
            "path": str(self.path),
            "name": m.name,
            "version": m.version,
            "manifest_release": m.release,
            "profile": m.profile,
            "sha256": self.sha256,
            "length": self.length,
            "manifest_sha256": self.manifest_sha256,
            "target": self.target.to_dict() if self.target else None,
        }


def check_target_custom(record: TargetRecord, manifest: Manifest, manifest_sha256: str) -> None:
    """The signed custom fields must describe this very bundle (name, version, profile, manifest
    hash, path). The path is the version's plain one or, for a further profile of the version, the
    one carrying the bundle's own profile (:func:`~edgeops.trust.targets.bundle_target_paths`):
    a target whose path names another profile is refused even if its custom fields match."""
    expected = bundle_target_paths(manifest.name, manifest.version, manifest.profile)
    if record.name not in expected:
        raise errors.UnknownTargetError(f"bundle {manifest.name} {manifest.version} (profile {manifest.profile}) should be target {' or '.join(map(repr, expected))}, not {record.name!r}")
    c = record.custom
    for key, value in (("name", manifest.name), ("version", manifest.version), ("manifest_sha256", manifest_sha256), ("profile", manifest.profile)):
        if c.get(key) != value:
            raise errors.HashMismatchError(f"target {record.name}: signed custom {key}={c.get(key)!r} does not match the bundle's {value!r}")


def read_verified(
    source: str | Path | BinaryIO,
    record: TargetRecord | None = None,
    *,
    sha256: str | None = None,
    sink: MemberSink | None = None,
    on_manifest: Callable[[Manifest], None] | None = None,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    read_bytes: int = READ_BYTES,
) -> BundleVerdict:
    """The one pass over a bundle: whole-file hash and every member checked while streaming.

    ``record`` (the signed TUF target) checks, in order: the file size against the signed
    length (before reading, when the size is known: an oversized file is refused at once),
    then while streaming the whole-file sha256 and every member against the manifest, then the
    whole-file sha256 against the signed one and the signed custom fields against the
    manifest. ``sha256`` alone (no record) requires that whole-file digest (the store's content
    address). ``sink`` receives each member's bytes during the same pass (see
    :func:`extract_verified`); ``on_manifest`` may refuse the bundle from its manifest before
    any member is read. Raises BundleError (internal inconsistency) or a TrustError subclass
    (LengthError, HashMismatchError, UnknownTargetError).
    """
    opened = None
    if isinstance(source, (str, Path)):
        label = str(source)
        try:
            opened = open(source, "rb")
        except OSError as e:
            raise BundleError(f"{source}: cannot open bundle ({e.strerror or e})") from e
        f: BinaryIO = opened
    else:
        f, label = source, str(getattr(source, "name", "bundle"))
    expected = record.sha256 if record is not None else sha256
    try:
        if record is not None and opened is not None:
            size = os.fstat(f.fileno()).st_size
            if size != record.length:
                raise errors.LengthError(f"{label}: {size} bytes, the signed target {record.name} has {record.length}")
        outer = hashlib.sha256()
        scanner = BundleScanner(max_total_bytes, label, sink=sink, on_manifest=on_manifest)
        read = 0
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeops-sha256") as pool:
                pending = None
                try:
                    while True:
                        block = f.read(read_bytes)
                        if not block:
                            break
                        read += len(block)
                        if record is not None and read > record.length:
                            raise errors.LengthError(f"{label}: grew past the signed length {record.length} while reading")
                        if pending is not None:
                            pending.result()
                        # The whole-file hash of this block runs beside the member hashes below.
                        pending = pool.submit(outer.update, block)
                        scanner.feed(block)
                finally:
                    if pending is not None:
                        pending.result()
            result = scanner.finish()
        except BundleError as e:
            if expected is None:
                raise
            # Say what matters most: a file that is not the expected one is a trust failure; a
            # signed file that is inconsistent inside is the publisher's bundle error.
            while block := f.read(read_bytes):
                outer.update(block)
                read += len(block)
            if (record is not None and read != record.length) or outer.hexdigest() != expected:
                what = f"the signed target {record.name}" if record is not None else f"bundle {expected[:16]}…"
                raise errors.HashMismatchError(f"{label}: not {what} (sha256 differs; {e})") from e
            raise
    except OSError as e:  # reading the bundle, or writing a member through the sink (a full disk)
        raise BundleError(f"{label}: I/O error during the pass ({e.strerror or e})") from e
    finally:
        if opened is not None:
            opened.close()
    digest = outer.hexdigest()
    if record is not None and read != record.length:
        raise errors.LengthError(f"{label}: read {read} bytes, the signed target {record.name} has {record.length}")
    if expected is not None and digest != expected:
        what = f"the signed target {record.name}" if record is not None else "the expected bundle"
        raise errors.HashMismatchError(f"{label}: sha256 {digest[:16]}… does not match {what} ({expected[:16]}…): tampered or not the published bundle")
    if record is not None:
        check_target_custom(record, result.manifest, result.manifest_sha256)
    return BundleVerdict(Path(label), result.manifest, result.manifest_sha256, digest, read, record)


def verify_bundle_file(path: str | Path, record: TargetRecord | None = None, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES, read_bytes: int = READ_BYTES) -> BundleVerdict:
    """Verify a bundle file in one pass, writing nothing; with ``record`` also against the signed
    TUF target (see :func:`read_verified`)."""
    return read_verified(path, record, max_total_bytes=max_total_bytes, read_bytes=read_bytes)


def extract_verified(
    source: str | Path | BinaryIO,
    dest: str | Path,
    record: TargetRecord | None = None,
    *,
    sha256: str | None = None,
    on_manifest: Callable[[Manifest], None] | None = None,
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
) -> BundleVerdict:
    """Verify and extract in the one pass: every member is written under ``dest`` (created;
    must not exist) as it is checked; on any error, including an ``OSError`` such as a full
    disk, ``dest`` is removed before the error is raised, so nothing that failed is left."""
    dest = Path(dest)
    dest.mkdir(parents=True)
    sink = FolderSink(dest)
    try:
        verdict = read_verified(source, record, sha256=sha256, sink=sink, on_manifest=on_manifest, max_total_bytes=max_total_bytes)
    except BaseException:
        sink.close()
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return verdict


def verify_bundle_bytes(data: bytes, record: TargetRecord | None = None, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES, label: str = "bundle") -> BundleVerdict:
    """:func:`verify_bundle_file` for a bundle already in memory (pure: no I/O)."""
    if record is not None and len(data) != record.length:
        raise errors.LengthError(f"{label}: {len(data)} bytes, the signed target {record.name} has {record.length}")
    digest = hashlib.sha256(data).hexdigest()
    if record is not None and digest != record.sha256:
        raise errors.HashMismatchError(f"{label}: sha256 does not match the signed target {record.name}: tampered or not the published bundle")
    scanner = BundleScanner(max_total_bytes, label)
    scanner.feed(data)
    result = scanner.finish()
    if record is not None:
        check_target_custom(record, result.manifest, result.manifest_sha256)
    return BundleVerdict(Path(label), result.manifest, result.manifest_sha256, digest, len(data), record)


def read_manifest(path: str | Path) -> Manifest:
    """Read only the manifest of a bundle file (the first member), checking nothing else."""
    scanner = BundleScanner(label=str(path))
    try:
        with open(path, "rb") as f:
            while scanner.manifest is None:
                block = f.read(64 * 1024)
                if not block:
                    break
                scanner.feed(block)
    except OSError as e:
        raise BundleError(f"{path}: cannot read bundle ({e.strerror or e})") from e
    except BundleError:
        if scanner.manifest is None:
            raise
    if scanner.manifest is None:
        raise BundleError(f"{path}: no manifest.json at the start of the bundle")
    return scanner.manifest
