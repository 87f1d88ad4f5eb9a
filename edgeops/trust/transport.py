"""How the TUF client reaches a repository: the ``RepositoryTransport`` protocol and two transports.

A transport fetches one repository file by its path relative to the repository root and
yields its bytes in chunks. Paths are the same on every transport (directory, HTTP, MQTT)::

    metadata/root.json                 the newest root (informational; clients use N.root.json)
    metadata/<N>.root.json             every root version, for root rotation
    metadata/timestamp.json            the only unversioned file clients fetch
    metadata/<N>.snapshot.json         consistent snapshots: versioned snapshot ...
    metadata/<N>.targets.json          ... and targets
    targets/<name>/<version>/<sha256>.<name>-<version>.bundle   a bundle (hash-prefixed basename)

Contract for implementations:

- raise :class:`~edgeops.trust.errors.NotFoundError` when the file does not exist, and
  :class:`~edgeops.trust.errors.RepositoryUnavailableError` for any other transport failure
  (wrap the cause with ``raise ... from e``);
- never yield more than ``max_length + 1`` bytes in total: the caller treats anything beyond
  ``max_length`` as an endless-data attack (:class:`~edgeops.trust.errors.LengthError`) and
  stops; reading further would only waste bandwidth and memory;
- verify nothing: the TUF client checks lengths, hashes, signatures and versions.

:func:`check_repo_path` is the one validator of these paths; servers (the fleet's MQTT and
HTTP repository servers) use it on every incoming request before touching the disk.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from edgeops.trust.errors import NotFoundError, RepositoryUnavailableError

CHUNK_BYTES = 256 * 1024
_PATH_RE = re.compile(r"^(metadata|targets)/[A-Za-z0-9._@+-][A-Za-z0-9._@+/-]{0,511}$")


@runtime_checkable
class RepositoryTransport(Protocol):
    """Fetches repository files by path relative to the repository root (see module doc)."""

    def fetch(self, path: str, max_length: int) -> Iterator[bytes]:
        """Yield the bytes of ``path`` in chunks, at most ``max_length + 1`` bytes in total.

        Raises:
            NotFoundError: the repository has no such file.
            RepositoryUnavailableError: any other transport failure.
        """
        ...


def check_repo_path(path: str) -> str:
    """Return ``path`` when it is a valid repository path, else raise :class:`NotFoundError`.

    Valid: ``metadata/...`` or ``targets/...``, plain relative segments only (no ``..``, no
    empty or dot segments, no backslashes, no absolute paths). Servers call this on every
    request so that no request can read outside the repository.
    """
    if not isinstance(path, str) or not _PATH_RE.match(path):
        raise NotFoundError(f"{path!r} is not a repository path (metadata/... or targets/...)")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise NotFoundError(f"{path!r} is not a repository path (empty, '.' or '..' segment)")
    return path


class DirectoryTransport:
    """A repository in a local folder (``metadata/`` and ``targets/`` under ``repo_dir``).

    Used by ``edgeops verify --repo DIR``, tests, and devices that receive repositories on
    removable media. Symlinks that lead outside ``repo_dir`` are refused.
    """

    def __init__(self, repo_dir: str | Path, chunk_bytes: int = CHUNK_BYTES):
        self.root = Path(repo_dir).resolve()
        self.chunk_bytes = chunk_bytes

    def fetch(self, path: str, max_length: int) -> Iterator[bytes]:
        """Yield the file's bytes in chunks, stopping after ``max_length + 1`` bytes."""
        check_repo_path(path)
        full = (self.root / path).resolve()
        if self.root not in full.parents:
            raise NotFoundError(f"{path!r} resolves outside the repository {self.root}")
        try:
            f = open(full, "rb")
        except FileNotFoundError as e:
            raise NotFoundError(f"{self.root}: no file {path}") from e
        except OSError as e:
            raise RepositoryUnavailableError(f"{self.root}: cannot read {path}: {e.strerror or e}") from e
        return self._chunks(f, max_length, path)

    def _chunks(self, f, max_length: int, path: str) -> Iterator[bytes]:
        remaining = max_length + 1
        with f:
            while remaining > 0:
                try:
                    block = f.read(min(self.chunk_bytes, remaining))
                except OSError as e:
                    raise RepositoryUnavailableError(f"{self.root}: reading {path} failed: {e}") from e
                if not block:
                    return
                remaining -= len(block)
                yield block


class HttpTransport:
    """A repository served over HTTP(S) at ``base_url`` (the fleet console, a CDN, a web server).

    Uses urllib from the standard library: streaming, bounded by ``max_length + 1``, with a
    socket timeout so a stalled server cannot hang the device (slow-retrieval attack).
    """

    def __init__(self, base_url: str, timeout_s: float = 30.0, chunk_bytes: int = CHUNK_BYTES, headers: dict[str, str] | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise RepositoryUnavailableError(f"{base_url!r}: repository URL must start with http:// or https://")
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.timeout_s = timeout_s
        self.chunk_bytes = chunk_bytes
        self.headers = dict(headers or {})

    def url_for(self, path: str) -> str:
        """The URL of a repository path (each segment percent-encoded)."""
        check_repo_path(path)
        return self.base_url + urllib.parse.quote(path, safe="/")

    def fetch(self, path: str, max_length: int) -> Iterator[bytes]:
        """Open the URL and yield its body in chunks, at most ``max_length + 1`` bytes."""
        url = self.url_for(path)
        request = urllib.request.Request(url, headers={"User-Agent": "edgeops-trust", **self.headers})
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout_s)  # noqa: S310 (scheme checked above)
        except urllib.error.HTTPError as e:
            if e.code in (403, 404, 410):
                raise NotFoundError(f"{url}: HTTP {e.code}") from e
            raise RepositoryUnavailableError(f"{url}: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise RepositoryUnavailableError(f"{url}: {getattr(e, 'reason', e)}") from e
        return self._chunks(response, max_length, url)

    def _chunks(self, response, max_length: int, url: str) -> Iterator[bytes]:
        remaining = max_length + 1
        with response:
            while remaining > 0:
                try:
                    block = response.read(min(self.chunk_bytes, remaining))
                except (OSError, ValueError) as e:
                    raise RepositoryUnavailableError(f"{url}: transfer failed: {e}") from e
                if not block:
                    return
                remaining -= len(block)
                yield block


def transport_for(location: str | os.PathLike) -> RepositoryTransport:
    """A transport for a CLI ``--repo`` value: an http(s) URL or a local folder."""
    text = str(location)
    if text.startswith(("http://", "https://")):
        return HttpTransport(text)
    return DirectoryTransport(text)
