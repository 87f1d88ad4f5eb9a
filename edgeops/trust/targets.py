"""Signed bundle targets as the device sees them, and their download: no TUF code here.

Everything the agent's resident process needs about a target once TUF has verified it lives
in this module: the :class:`TargetRecord` (path, length, hashes, signed custom fields), the
target path conventions, and :func:`download_target`, which fetches a target's file through
any :class:`~edgeops.trust.transport.RepositoryTransport` and accepts it only when its length
and sha256 match the signed ones. The TUF client workflow itself (:mod:`edgeops.trust.client`,
python-tuf, securesystemslib, cryptography) stays out of the import graph of this module, so
the agent can run it in a short-lived worker process (:mod:`edgeops.agent.trust_worker`) and
keep only this on the serving side.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

from edgeops.trust import errors
from edgeops.trust.transport import RepositoryTransport

METADATA_PREFIX = "metadata/"
TARGETS_PREFIX = "targets/"
BUNDLE_SUFFIX = ".bundle"
# Field of root.json's signed part that lists the console's command keys ({keyid: key dict}).
COMMAND_KEYS_FIELD = "x-edgeops-command-keys"


# A profile name as it may appear in a target path (one path segment, no dots-only names).
PROFILE_SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def target_path(name: str, version: str) -> str:
    """The TUF target path of bundle ``name`` at ``version``: ``<name>/<version>/<name>-<version>.bundle``.

    The first profile a version is published for takes this path (every single-profile
    repository has only these); each further profile of the same version takes
    :func:`profile_target_path`. Which profile a target serves is its signed ``custom.profile``.
    """
    return f"{name}/{version}/{name}-{version}{BUNDLE_SUFFIX}"


def profile_target_path(name: str, version: str, profile: str) -> str:
    """The TUF target path of ``name@version`` built for ``profile`` when another profile's bundle
    of that version holds :func:`target_path`: ``<name>/<version>/<profile>/<name>-<version>.bundle``.

    ValueError for a profile name that cannot be one path segment.
    """
    if not PROFILE_SEGMENT_RE.match(profile or ""):
        raise ValueError(f"profile {profile!r} cannot name a target path (letters, digits, '.', '_', '-'; at most 128)")
    return f"{name}/{version}/{profile}/{name}-{version}{BUNDLE_SUFFIX}"


def bundle_target_paths(name: str, version: str, profile: str) -> tuple[str, ...]:
    """The paths a bundle ``name@version`` built for ``profile`` may be published under (the plain
    one, then the profile's own); a verifier accepts a signed target at either when its signed
    custom fields describe the bundle."""
    plain = target_path(name, version)
    return (plain, profile_target_path(name, version, profile)) if PROFILE_SEGMENT_RE.match(profile or "") else (plain,)


def parse_target_path(path: str) -> tuple[str, str, str | None] | None:
    """(name, version, profile or None) of a bundle target path of either form; None for any other path."""
    parts = path.split("/")
    if len(parts) == 3 and path == target_path(parts[0], parts[1]):
        return parts[0], parts[1], None
    if len(parts) == 4 and PROFILE_SEGMENT_RE.match(parts[2]) and path == profile_target_path(parts[0], parts[1], parts[2]):
        return parts[0], parts[1], parts[2]
    return None


def target_file_path(path: str, sha256: str) -> str:
    """The repository path of a target's file with consistent snapshots (hash-prefixed basename)."""
    dirname, sep, basename = path.rpartition("/")
    return f"{TARGETS_PREFIX}{dirname}{sep}{sha256}.{basename}"


@dataclass(frozen=True)
class TargetRecord:
    """A target as signed by the repository's targets role (only ever built from verified metadata).

    ``name`` is the TUF target path (``<bundle>/<version>/<bundle>-<version>.bundle``, or
    ``<bundle>/<version>/<profile>/<bundle>-<version>.bundle`` for a further profile of a version);
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

    def to_wire(self) -> dict[str, Any]:
        """JSON form with every signed hash (what the TUF worker hands the agent)."""
        return {**self.to_dict(), "hashes": dict(self.hashes)}

    @classmethod
    def from_wire(cls, data: Any) -> "TargetRecord":
        """Inverse of :meth:`to_wire`; MalformedMetadataError when a field is missing or mistyped."""
        try:
            length = data["length"]
            if not isinstance(length, int) or isinstance(length, bool) or length < 0:
                raise TypeError("length must be a non-negative integer")
            hashes = data["hashes"]
            if not isinstance(hashes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in hashes.items()):
                raise TypeError("hashes must map algorithm names to hex strings")
            return target_record(str(data["name"]), length, hashes, data.get("custom", {}))
        except (KeyError, TypeError) as e:
            raise errors.MalformedMetadataError(f"target record: {e}") from e


def pick_bundle_target(get_target: Callable[[str], "TargetRecord"], name: str, version: str, profile: str) -> "TargetRecord":
    """The signed target of ``name@version`` built for ``profile``, read through ``get_target``
    (a verified lookup by path raising UnknownTargetError): the plain path when its signed
    profile is ``profile``, else the profile's own path. UnknownTargetError naming both when
    neither holds a target for that profile."""
    plain = target_path(name, version)
    try:
        record = get_target(plain)
        if record.profile == profile:
            return record
        found = f"{plain} is built for profile {record.profile!r}"
    except errors.UnknownTargetError:
        found = f"{plain} is not listed"
    if not PROFILE_SEGMENT_RE.match(profile or ""):
        raise errors.UnknownTargetError(f"{name}@{version}: no target for profile {profile!r} ({found})")
    try:
        return get_target(profile_target_path(name, version, profile))
    except errors.UnknownTargetError as e:
        raise errors.UnknownTargetError(f"{name}@{version}: no target built for profile {profile!r} ({found}; {e})") from e


def download_target(transport: RepositoryTransport, record: TargetRecord, dest: str | Path) -> Path:
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
            chunks = transport.fetch(record.repo_path, record.length)
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


def target_record(path: str, length: int, hashes: dict[str, str], custom: Any) -> TargetRecord:
    """A TargetRecord from the fields of a verified TUF target (MalformedMetadataError without sha256)."""
    if "sha256" not in hashes:
        raise errors.MalformedMetadataError(f"target {path!r} has no sha256 in signed metadata")
    return TargetRecord(name=path, length=length, sha256=hashes["sha256"], custom=dict(custom) if isinstance(custom, dict) else {}, hashes=dict(hashes))
