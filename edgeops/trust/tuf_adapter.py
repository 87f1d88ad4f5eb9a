"""The one place the device side reaches python-tuf's ngclient, private parts included.

python-tuf's documented client API (``Updater``: ``refresh``, ``get_targetinfo``) does not
give what the device needs, so this module leans on parts python-tuf may change in any
release. Each is named here, and tests/edgeops/trust/test_tuf_adapter.py asserts every one
against the installed python-tuf, whose version range pyproject.toml pins: an upgrade that
changes one fails that test, not a device.

Private members used:

- ``Updater._persist_file(filename, data)``: overridden by :class:`DurableUpdater` so the
  metadata cache is written with fsync before ``os.replace`` (ngclient's own write is not
  durable across power loss).
- ``Updater._trusted_set`` (a ``TrustedMetadataSet``): the verified root, targets and
  versions after a refresh (:func:`trusted_root`, :func:`trusted_targets`,
  :func:`trusted_versions`), and its ``reference_time`` (:func:`set_reference_time`: a frozen
  clock for expiry; ngclient reads the time once, at construction).

Exception messages read (python-tuf gives one exception class for several causes):

- ``BadVersionNumberError``: "Expected <role> v<N>, got ..." / "Expected snapshot version ..."
  is a version that disagrees with the one its parent role names (mix-and-match); any other
  is a version below one already trusted (rollback) — :func:`is_version_mismatch`.
- ``UnsignedMetadataError``: "<role> was signed by <good>/<threshold> keys" tells too few good
  signatures (threshold) from none (signature) — :func:`good_signatures`.
- ``RepositoryError``: "New snapshot is missing info for '<file>'" is metadata removed from a
  newer snapshot (rollback) — :func:`is_missing_info`.

:func:`translate_tuf_error` maps all of it onto :mod:`edgeops.trust.errors`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, Root, Targets
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from edgeops.trust import errors
from edgeops.trust.fsutil import atomic_write

__all__ = [
    "TUF_FAILURES",
    "DurableUpdater",
    "FetcherInterface",
    "Metadata",
    "UpdaterConfig",
    "good_signatures",
    "is_missing_info",
    "is_version_mismatch",
    "set_reference_time",
    "translate_tuf_error",
    "trusted_root",
    "trusted_targets",
    "trusted_versions",
    "tuf_exc",
]

TOP_LEVEL_ROLES = ("root", "timestamp", "snapshot", "targets")

# What ngclient (and the parsers below it) may raise on hostile input; anything else is a bug.
TUF_FAILURES = (tuf_exc.RepositoryError, tuf_exc.DownloadError, OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, UnicodeError)


class DurableUpdater(Updater):
    """ngclient Updater whose metadata cache writes are durable (fsync before os.replace)."""

    def _persist_file(self, filename: str, data: bytes) -> None:
        atomic_write(filename, data)


def _trusted_set(updater: Updater) -> Any:
    return updater._trusted_set  # noqa: SLF001 - private, pinned by the contract test


def trusted_root(updater: Updater) -> Root:
    """The root the updater trusts now (the bootstrap root before a refresh)."""
    root: Root = _trusted_set(updater).root
    return root


def trusted_targets(updater: Updater) -> Targets:
    """The top-level targets the last refresh verified."""
    targets: Targets = _trusted_set(updater).targets
    return targets


def trusted_versions(updater: Updater) -> dict[str, int]:
    """Versions of the trusted top-level metadata (roles not loaded yet are left out)."""
    ts = _trusted_set(updater)
    return {role: ts[role].version for role in TOP_LEVEL_ROLES if role in ts}


def set_reference_time(updater: Updater, when: datetime) -> None:
    """Make the updater judge expiry at ``when`` (timezone-aware) instead of its construction time."""
    _trusted_set(updater).reference_time = when


_VERSION_MISMATCH = re.compile(r"Expected (snapshot|targets|[\w.-]+) v\d+, got|Expected snapshot version")
_SIGNED_BY = re.compile(r"signed by (\d+)/(\d+) keys")


def is_version_mismatch(e: tuf_exc.BadVersionNumberError) -> bool:
    """True: the version disagrees with the one its parent role names; False: a rollback."""
    return _VERSION_MISMATCH.search(str(e)) is not None


def good_signatures(e: tuf_exc.UnsignedMetadataError) -> int | None:
    """How many good signatures the metadata had (None when python-tuf did not say)."""
    m = _SIGNED_BY.search(str(e))
    return int(m.group(1)) if m else None


def is_missing_info(e: tuf_exc.RepositoryError) -> bool:
    """True when a newer snapshot dropped a file the trusted one listed."""
    return "missing info" in str(e)


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
        return errors.MixAndMatchError(msg) if is_version_mismatch(e) else errors.RollbackError(msg)
    if isinstance(e, tuf_exc.UnsignedMetadataError):
        good = good_signatures(e)
        return errors.ThresholdError(msg) if good else errors.SignatureError(msg)
    if isinstance(e, tuf_exc.LengthOrHashMismatchError):
        return errors.MixAndMatchError(msg + " (does not match the length/hash its parent role declares)")
    if isinstance(e, tuf_exc.RepositoryError):
        return errors.RollbackError(msg) if is_missing_info(e) else errors.MalformedMetadataError(msg)
    if isinstance(e, OSError):
        return errors.TrustError(f"{context}: cannot write the metadata cache: {e}")
    return errors.MalformedMetadataError(msg)
