"""The device-side TUF client and the release-counter floor.

:class:`TrustClient` runs python-tuf's ngclient ``Updater`` (the TUF client workflow: root
rotation, timestamp, snapshot, targets; signatures, thresholds, versions, expiry, lengths and
hashes) over any :class:`~edgeops.trust.transport.RepositoryTransport` (directory, HTTP, or
the agent's MQTT request/response). Verified metadata is cached in ``metadata_dir`` with
atomic writes (temp file, fsync, os.replace). Metadata that fails verification is never
written, and a target is only ever visible at its destination after its length and sha256
matched the signed ones.

:class:`ReleaseFloor` is the device's anti-rollback memory: for each bundle name, the highest
release counter committed. A target below it is refused even when correctly signed (a
compromised or careless console cannot push devices back to an old, vulnerable model, the
way RAUC and Uptane use a monotonic counter). Raise the floor on *commit*, not on install,
so that the agent can still fall back to the previous committed version during probation.

Errors are those of :mod:`edgeops.trust.errors`; python-tuf's exceptions are wrapped here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tuf.api import exceptions as tuf_exc
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from edgeops.trust import errors
from edgeops.trust.fsutil import atomic_write
from edgeops.trust.transport import RepositoryTransport

_METADATA_PREFIX = "metadata/"
_TARGETS_PREFIX = "targets/"
BUNDLE_SUFFIX = ".bundle"
# Field of root.json's signed part that lists the console's command keys ({keyid: key dict}).
COMMAND_KEYS_FIELD = "x-edgeops-command-keys"


def target_path(name: str, version: str) -> str:
    """The TUF target path of bundle ``name`` at ``version``: ``<name>/<version>/<name>-<version>.bundle``."""
    return f"{name}/{version}/{name}-{version}{BUNDLE_SUFFIX}"


def target_file_path(path: str, sha256: str) -> str:
    """The repository path of a target's file with consistent snapshots (hash-prefixed basename)."""
    dirname, sep, basename = path.rpartition("/")
    return f"{_TARGETS_PREFIX}{dirname}{sep}{sha256}.{basename}"


@dataclass(frozen=True)
class TargetRecord:
    """A target as signed by the repository's targets role (only ever built from verified metadata).

    ``name`` is the TUF target path (``<bundle>/<version>/<bundle>-<version>.bundle``);
    ``custom`` holds what the publisher signed about the bundle: ``name``, ``version``,
    ``release`` (the counter devices enforce), ``manifest_release``, ``profile``,
    ``manifest_sha256`` (see :mod:`edgeops.trust.repository`).
    """

    name: str
    length: int
    sha256: str
    custom: dict[str, Any] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)

    @property
    def bundle_name(self) -> str:
        """The bundle name from the signed custom field."""
        return str(self.custom.get("name", ""))

    @property
    def version(self) -> str:
        """The bundle version from the signed custom field."""
        return str(self.custom.get("version", ""))

    @property
    def release(self) -> int:
        """The release counter devices enforce (signed; may exceed the manifest's after a downgrade)."""
        value = self.custom.get("release", 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def profile(self) -> str:
        """The hardware profile the bundle was built for."""
        return str(self.custom.get("profile", ""))

    @property
    def repo_path(self) -> str:
        """Where the file lives in the repository (consistent snapshot path)."""
        return target_file_path(self.name, self.sha256)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "length": self.length, "sha256": self.sha256, "custom": dict(self.custom)}


class _TransportFetcher(FetcherInterface):
    """ngclient fetcher that maps the Updater's URLs (``metadata/x``, ``targets/x``) to a transport.

    ``download_file`` is overridden so that the transport learns ``max_length`` and can stop
    reading early; the length bound is enforced here again whatever the transport does.
    """

    def __init__(self, transport: RepositoryTransport):
        self.transport = transport
        # Set by TrustClient once the Updater exists: the currently trusted root.
        self.trusted_root: Callable[[], Any] | None = None

    def _fetch(self, url: str):  # pragma: no cover - download_file below is what ngclient uses
        return self._open(url, 1 << 40)

    def _open(self, url: str, max_length: int):
        try:
            return iter(self.transport.fetch(url, max_length))
        except errors.NotFoundError as e:
            # ngclient ends the root-rotation walk on 404: translate so it can.
            raise tuf_exc.DownloadHTTPError(str(e), 404) from e
        except errors.TrustError as e:
            raise tuf_exc.DownloadError(str(e)) from e

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int):
        with self._download(url, max_length) as tmp:
            if url.startswith(_METADATA_PREFIX):
                data = tmp.read()
                check_canonical_encoding(data, url)
                if self.trusted_root is not None:
                    check_no_bad_signatures(data, url, self.trusted_root())
                tmp.seek(0)
            yield tmp

    @contextlib.contextmanager
    def _download(self, url: str, max_length: int):
        import tempfile

        received = 0
        with tempfile.TemporaryFile() as tmp:
            chunks = self._open(url, max_length)
            try:
                for chunk in chunks:
                    received += len(chunk)
                    if received > max_length:
                        raise tuf_exc.DownloadLengthMismatchError(f"{url}: more than the allowed {max_length} bytes (endless data)")
                    tmp.write(chunk)
            except tuf_exc.DownloadError:
                raise
            except errors.NotFoundError as e:
                raise tuf_exc.DownloadHTTPError(str(e), 404) from e
            except Exception as e:
                raise tuf_exc.DownloadError(f"{url}: {e}") from e
            finally:
                close = getattr(chunks, "close", None)
                if close:
                    close()
            tmp.seek(0)
            yield tmp


def check_canonical_encoding(data: bytes, source: str) -> None:
    """Refuse metadata bytes that are not exactly how a python-tuf repository writes them.

    Signatures cover the canonical JSON of ``signed``, not the file bytes, so whitespace,
    escapes and the hex case of signatures could otherwise change without breaking them.
    Accepting exactly one encoding (indented or compact, sorted keys, lowercase hex
    signatures) removes that malleability: a file either is byte-for-byte what the publisher
    wrote or is refused. Raises MalformedMetadataError.
    """
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise errors.MalformedMetadataError(f"{source}: not JSON: {e}") from e
    encodings = (
        json.dumps(doc, indent=1, separators=(",", ": "), sort_keys=True).encode(),
        json.dumps(doc, separators=(",", ":"), sort_keys=True).encode(),
    )
    if data not in encodings:
        raise errors.MalformedMetadataError(f"{source}: metadata is not in the canonical encoding the repository writes (altered in transit?)")
    sigs = doc.get("signatures") if isinstance(doc, dict) else None
    if isinstance(sigs, list):
        for sig in sigs:
            value = sig.get("sig") if isinstance(sig, dict) else None
            if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]*", value):
                raise errors.MalformedMetadataError(f"{source}: signature is not lowercase hex")


def check_no_bad_signatures(data: bytes, source: str, trusted_root) -> None:
    """Refuse top-level metadata with any signature that is not a good one by a key of its role.

    TUF only needs a threshold of good signatures, so a corrupted or foreign surplus signature
    would pass; but this repository only ever signs with the role's own keys, so such a
    signature means the file was altered, and an altered file is refused whole. Keys are those
    of the trusted root (for a new root, also its own root keys, as rotation signs with both).
    Raises SignatureError / MalformedMetadataError.
    """
    from tuf.api.metadata import Metadata

    try:
        md = Metadata.from_bytes(data)
    except Exception as e:  # noqa: BLE001 - tuf raises DeserializationError wrapping anything
        raise errors.MalformedMetadataError(f"{source}: not TUF metadata: {e}") from e
    role = md.signed.type
    if role not in ("root", "timestamp", "snapshot", "targets"):
        return
    roots = [trusted_root] + ([md.signed] if role == "root" else [])
    payload = md.signed_bytes
    trusted_keys = {}
    for root in roots:
        try:
            for keyid in root.roles[role].keyids:
                if keyid in root.keys:
                    trusted_keys[keyid] = root.keys[keyid]
        except (KeyError, AttributeError):
            continue
    for keyid, sig in md.signatures.items():
        key = trusted_keys.get(keyid)
        if key is None:
            raise errors.SignatureError(f"{source}: carries a signature by {keyid[:12]}, which is not a trusted {role} key (altered file)")
        try:
            key.verify_signature(sig, payload)
        except Exception as e:  # noqa: BLE001 - securesystemslib raises several types
            raise errors.SignatureError(f"{source}: signature by trusted {role} key {keyid[:12]} does not verify (altered file)") from e


class _Updater(Updater):
    """ngclient Updater whose metadata cache writes are durable (fsync before os.replace)."""

    def _persist_file(self, filename: str, data: bytes) -> None:
        atomic_write(filename, data)


_SIGNED_BY = re.compile(r"signed by (\d+)/(\d+) keys")


def translate_tuf_error(e: BaseException, context: str) -> errors.TrustError:
    """Map a python-tuf (or transport) exception to the edgeops trust error tree."""
    cause: BaseException | None = e
    while cause is not None:
        # A typed error raised by our own transport or code travels through ngclient unchanged.
        if isinstance(cause, errors.TrustError) and not isinstance(cause, errors.NotFoundError):
            return type(cause)(f"{context}: {cause}")
        cause = cause.__cause__
    msg = f"{context}: {e}"
    if isinstance(e, tuf_exc.DownloadLengthMismatchError):
        return errors.LengthError(msg)
    if isinstance(e, tuf_exc.DownloadHTTPError):
        if e.status_code in (403, 404):
            return errors.NotFoundError(msg)
        return errors.RepositoryUnavailableError(msg)
    if isinstance(e, tuf_exc.DownloadError):
        return errors.RepositoryUnavailableError(msg)
    if isinstance(e, tuf_exc.ExpiredMetadataError):
        return errors.ExpiredError(msg + " (the repository must re-sign it: `edgeops repo refresh`)")
    if isinstance(e, tuf_exc.BadVersionNumberError):
        text = str(e)
        # Versions that disagree with what the parent role names are mix-and-match; a version
        # lower than one already trusted is a rollback.
        if re.search(r"Expected (snapshot|targets|[\w.-]+) v\d+, got|Expected snapshot version", text):
            return errors.MixAndMatchError(msg)
        return errors.RollbackError(msg)
    if isinstance(e, tuf_exc.UnsignedMetadataError):
        m = _SIGNED_BY.search(str(e))
        if m and int(m.group(1)) > 0:
            return errors.ThresholdError(msg)
        return errors.SignatureError(msg)
    if isinstance(e, tuf_exc.LengthOrHashMismatchError):
        return errors.MixAndMatchError(msg + " (does not match the length/hash its parent role declares)")
    if isinstance(e, tuf_exc.RepositoryError):
        if "missing info" in str(e):
            return errors.RollbackError(msg)
        return errors.MalformedMetadataError(msg)
    if isinstance(e, OSError):
        return errors.TrustError(f"{context}: cannot write the metadata cache: {e}")
    return errors.MalformedMetadataError(msg)


# What ngclient (and the parsers below it) may raise on hostile input; anything else is a bug.
_TUF_FAILURES = (tuf_exc.RepositoryError, tuf_exc.DownloadError, OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, UnicodeError)


class TrustClient:
    """A TUF client for one repository, caching verified metadata in ``metadata_dir``.

    Args:
        metadata_dir: writable folder for the metadata cache (root history, timestamp, ...).
        transport: how to reach the repository (see :mod:`edgeops.trust.transport`).
        root: the trust anchor, root.json bytes or a path to it (provisioned with the device).
            None uses the cached ``metadata_dir/root.json`` (trust what was trusted before).
        clock: returns the reference time for expiry checks (tests freeze it); default now.
        config: python-tuf UpdaterConfig (length caps of metadata files).

    Each :meth:`refresh` runs the full TUF client workflow anew (ngclient Updaters refresh
    once), so a long-running agent calls it before every look-up of a new assignment.
    """

    def __init__(
        self,
        metadata_dir: str | Path,
        transport: RepositoryTransport,
        root: bytes | str | Path | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        config: UpdaterConfig | None = None,
    ):
        self.metadata_dir = Path(metadata_dir)
        self.transport = transport
        self.clock = clock
        self.config = config or UpdaterConfig()
        if isinstance(root, (str, Path)):
            try:
                root = Path(root).read_bytes()
            except OSError as e:
                raise errors.KeyFileError(f"{root}: cannot read trusted root ({e.strerror or e})") from e
        self._bootstrap = root
        self._updater: _Updater | None = None
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        if root is None and not (self.metadata_dir / "root.json").exists():
            raise errors.KeyFileError(f"{self.metadata_dir}: no root.json cached and no trusted root given; provision the device with the repository's root.json")

    def _new_updater(self) -> _Updater:
        fetcher = _TransportFetcher(self.transport)
        try:
            updater = _Updater(
                str(self.metadata_dir),
                _METADATA_PREFIX,
                None,
                _TARGETS_PREFIX,
                fetcher=fetcher,
                config=self.config,
                bootstrap=self._bootstrap,
            )
        except _TUF_FAILURES as e:
            raise translate_tuf_error(e, f"{self.metadata_dir}: trusted root") from e
        fetcher.trusted_root = lambda: updater._trusted_set.root
        if self.clock is not None:
            # ngclient takes its reference time once at construction; a frozen clock replaces it.
            updater._trusted_set.reference_time = self.clock().astimezone(timezone.utc)
        return updater

    def refresh(self) -> None:
        """Run the TUF client workflow: update root (rotations), timestamp, snapshot, targets.

        Raises a :class:`~edgeops.trust.errors.TrustError` subclass on any failure; the cache
        then holds only metadata that verified.
        """
        updater = self._new_updater()
        try:
            updater.refresh()
        except _TUF_FAILURES as e:
            self._updater = None
            raise translate_tuf_error(e, "repository metadata") from e
        self._updater = updater

    def _ready(self) -> _Updater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None  # refresh() sets it or raises
        return self._updater

    def trusted_versions(self) -> dict[str, int]:
        """Versions of the trusted top-level metadata after the last refresh."""
        ts = self._ready()._trusted_set
        return {role: ts[role].version for role in ("root", "timestamp", "snapshot", "targets") if role in ts}

    def get_target(self, name: str) -> TargetRecord:
        """The signed record of target path ``name``; UnknownTargetError when it is not listed."""
        updater = self._ready()
        try:
            info = updater.get_targetinfo(name)
        except _TUF_FAILURES as e:
            raise translate_tuf_error(e, f"target {name}") from e
        if info is None:
            raise errors.UnknownTargetError(f"the repository's signed targets do not list {name!r}")
        return _record(info.path, info.length, info.hashes, info.unrecognized_fields.get("custom", {}))

    def get_bundle(self, bundle_name: str, version: str) -> TargetRecord:
        """The signed record of a bundle by name and version (target path convention)."""
        return self.get_target(target_path(bundle_name, version))

    def command_keys(self) -> list:
        """The console's command-signing public keys, as signed into the trusted root.json.

        Rotating the command key is a root rotation, so devices learn the new key through TUF
        (see :data:`COMMAND_KEYS_FIELD`). Empty when the repository publishes none.
        """
        from securesystemslib.signer import SSlibKey

        root = self._ready()._trusted_set.root
        field_value = root.unrecognized_fields.get(COMMAND_KEYS_FIELD, {})
        try:
            return [SSlibKey.from_dict(keyid, dict(d)) for keyid, d in field_value.items()]
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise errors.MalformedMetadataError(f"root.json: malformed {COMMAND_KEYS_FIELD}: {e}") from e

    def targets(self) -> list[TargetRecord]:
        """Every target the top-level targets role signs."""
        targets = self._ready()._trusted_set.targets
        return [_record(t.path, t.length, t.hashes, t.unrecognized_fields.get("custom", {})) for t in targets.targets.values()]

    def download_target(self, record: TargetRecord, dest: str | Path) -> Path:
        """Fetch a target into ``dest``, verified against its signed length and hashes.

        The bytes stream into a temp file next to ``dest`` while being hashed; more bytes than
        the signed length stop the transfer (endless data). Only a file that matched is fsynced
        and renamed to ``dest``; on any error nothing is left behind.
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
        hashers = {alg: _hasher(alg, record.name) for alg in record.hashes}
        received = 0
        try:
            with open(tmp, "wb") as out:
                chunks = self.transport.fetch(record.repo_path, record.length)
                for chunk in chunks:
                    received += len(chunk)
                    if received > record.length:
                        raise errors.LengthError(f"{record.name}: the repository sent more than the signed {record.length} bytes (endless data); transfer stopped")
                    for h in hashers.values():
                        h.update(chunk)
                    out.write(chunk)
                if received != record.length:
                    raise errors.LengthError(f"{record.name}: received {received} bytes, the signed length is {record.length}")
                for alg, h in hashers.items():
                    if h.hexdigest() != record.hashes[alg]:
                        raise errors.HashMismatchError(f"{record.name}: {alg} of the downloaded file does not match the signed target (tampered or corrupt)")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(e, Exception) and not isinstance(e, errors.TrustError):
                # A transport that broke its contract (raised something untyped) is still a
                # transport failure to the caller.
                raise errors.RepositoryUnavailableError(f"{record.name}: download failed: {e!r}") from e
            raise
        return dest


def _hasher(alg: str, name: str):
    try:
        return hashlib.new(alg)
    except ValueError as e:
        raise errors.HashMismatchError(f"{name}: unsupported hash algorithm {alg!r} in signed metadata") from e


def _record(path: str, length: int, hashes: dict[str, str], custom: Any) -> TargetRecord:
    if "sha256" not in hashes:
        raise errors.MalformedMetadataError(f"target {path!r} has no sha256 in signed metadata")
    return TargetRecord(name=path, length=length, sha256=hashes["sha256"], custom=dict(custom) if isinstance(custom, dict) else {}, hashes=dict(hashes))


class ReleaseFloor:
    """Persisted per-bundle-name release-counter floor (device-side anti-rollback).

    The file is JSON ``{"format": 1, "floors": {"<bundle name>": <release>}}``, replaced
    atomically on every raise. A missing file means no floor yet.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def floors(self) -> dict[str, int]:
        """All floors; TrustError when the file exists but is corrupt (fail closed)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise errors.TrustError(f"{self.path}: cannot read the release floor ({e.strerror or e})") from e
        try:
            data = json.loads(raw)
            floors = data["floors"]
            if not isinstance(floors, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in floors.items()):
                raise ValueError("floors must map names to integers")
        except (ValueError, KeyError, TypeError) as e:
            raise errors.TrustError(f"{self.path}: release floor file is corrupt ({e}); refusing to guess a floor") from e
        return dict(floors)

    def get(self, name: str) -> int:
        """The floor of one bundle name (0 when none)."""
        return self.floors().get(name, 0)

    def check(self, name: str, release: int) -> None:
        """Raise RollbackError when ``release`` is below the committed floor of ``name``."""
        floor = self.get(name)
        if release < floor:
            raise errors.RollbackError(
                f"bundle {name!r} release {release} is below this device's floor {floor}: refusing a rollback "
                f"(publish the old version again with `edgeops publish --allow-downgrade` to issue a higher counter)"
            )

    def raise_to(self, name: str, release: int) -> None:
        """Raise the floor of ``name`` to ``release`` (never lowers it); atomic write."""
        floors = self.floors()
        if release <= floors.get(name, 0) and name in floors:
            return
        floors[name] = max(release, floors.get(name, 0))
        atomic_write(self.path, json.dumps({"format": 1, "floors": floors}, sort_keys=True, indent=2).encode() + b"\n")
