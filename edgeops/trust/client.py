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

Errors are those of :mod:`edgeops.trust.errors`. python-tuf is reached only through
:mod:`edgeops.trust.tuf_adapter` (its private parts and the mapping of its exceptions).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeops.trust import errors
from edgeops.trust.floor import ReleaseFloor
from edgeops.trust.targets import (
    BUNDLE_SUFFIX,
    COMMAND_KEYS_FIELD,
    METADATA_PREFIX,
    TARGETS_PREFIX,
    TargetRecord,
    download_target,
    pick_bundle_target,
    target_file_path,
    target_path,
    target_record,
)
from edgeops.trust.transport import RepositoryTransport
from edgeops.trust.tuf_adapter import (
    TUF_FAILURES,
    DurableUpdater,
    FetcherInterface,
    Metadata,
    UpdaterConfig,
    set_reference_time,
    translate_tuf_error,
    trusted_root,
    trusted_targets,
    trusted_versions,
    tuf_exc,
)

__all__ = ["BUNDLE_SUFFIX", "COMMAND_KEYS_FIELD", "ReleaseFloor", "TargetRecord", "TrustClient", "target_file_path", "target_path"]

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
            if url.startswith(METADATA_PREFIX):
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
        self._updater: DurableUpdater | None = None
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        if root is None and not (self.metadata_dir / "root.json").exists():
            raise errors.KeyFileError(f"{self.metadata_dir}: no root.json cached and no trusted root given; provision the device with the repository's root.json")

    def _new_updater(self) -> DurableUpdater:
        fetcher = _TransportFetcher(self.transport)
        try:
            updater = DurableUpdater(
                str(self.metadata_dir),
                METADATA_PREFIX,
                None,
                TARGETS_PREFIX,
                fetcher=fetcher,
                config=self.config,
                bootstrap=self._bootstrap,
            )
        except TUF_FAILURES as e:
            raise translate_tuf_error(e, f"{self.metadata_dir}: trusted root") from e
        fetcher.trusted_root = lambda: trusted_root(updater)
        if self.clock is not None:
            # ngclient takes its reference time once at construction; a frozen clock replaces it.
            set_reference_time(updater, self.clock().astimezone(timezone.utc))
        return updater

    def refresh(self) -> None:
        """Run the TUF client workflow: update root (rotations), timestamp, snapshot, targets.

        Raises a :class:`~edgeops.trust.errors.TrustError` subclass on any failure; the cache
        then holds only metadata that verified.
        """
        updater = self._new_updater()
        try:
            updater.refresh()
        except TUF_FAILURES as e:
            self._updater = None
            raise translate_tuf_error(e, "repository metadata") from e
        self._updater = updater

    def _ready(self) -> DurableUpdater:
        if self._updater is None:
            self.refresh()
        assert self._updater is not None  # refresh() sets it or raises
        return self._updater

    def trusted_versions(self) -> dict[str, int]:
        """Versions of the trusted top-level metadata after the last refresh."""
        return trusted_versions(self._ready())

    def get_target(self, name: str) -> TargetRecord:
        """The signed record of target path ``name``; UnknownTargetError when it is not listed."""
        updater = self._ready()
        try:
            info = updater.get_targetinfo(name)
        except TUF_FAILURES as e:
            raise translate_tuf_error(e, f"target {name}") from e
        if info is None:
            raise errors.UnknownTargetError(f"the repository's signed targets do not list {name!r}")
        return target_record(info.path, info.length, info.hashes, info.unrecognized_fields.get("custom", {}))

    def get_bundle(self, bundle_name: str, version: str, profile: str | None = None) -> TargetRecord:
        """The signed record of a bundle by name and version (target path convention); with
        ``profile``, the one built for that profile (the plain path when its signed profile is
        that one, else the profile's own path: see :func:`~edgeops.trust.targets.profile_target_path`)."""
        if profile is None:
            return self.get_target(target_path(bundle_name, version))
        return pick_bundle_target(self.get_target, bundle_name, version, profile)

    def root_field(self, name: str) -> Any:
        """A field the trusted root.json signs beyond the TUF spec (e.g. :data:`COMMAND_KEYS_FIELD`), or None."""
        return trusted_root(self._ready()).unrecognized_fields.get(name)

    def command_keys(self) -> list:
        """The console's command-signing public keys, as signed into the trusted root.json.

        Rotating the command key is a root rotation, so devices learn the new key through TUF
        (see :data:`COMMAND_KEYS_FIELD`). Empty when the repository publishes none.
        """
        from securesystemslib.signer import SSlibKey

        root = trusted_root(self._ready())
        field_value = root.unrecognized_fields.get(COMMAND_KEYS_FIELD, {})
        try:
            return [SSlibKey.from_dict(keyid, dict(d)) for keyid, d in field_value.items()]
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise errors.MalformedMetadataError(f"root.json: malformed {COMMAND_KEYS_FIELD}: {e}") from e

    def targets(self) -> list[TargetRecord]:
        """Every target the top-level targets role signs."""
        targets = trusted_targets(self._ready())
        return [target_record(t.path, t.length, t.hashes, t.unrecognized_fields.get("custom", {})) for t in targets.targets.values()]

    def download_target(self, record: TargetRecord, dest: str | Path) -> Path:
        """Fetch a target into ``dest`` through this client's transport (see :func:`edgeops.trust.targets.download_target`)."""
        return download_target(self.transport, record, dest)
