"""A per-process repository cache for simulated devices (a simulation shortcut, verified).

Every simulated device runs its own TUF client (``edgeops.trust.client.TrustClient``) over a
:class:`CachingTransport`. The transport answers from a cache shared by the devices of one
simulator process, and asks the real repository (through the device's own transport: MQTT
fetch over that device's session, or HTTP) only for what the cache cannot answer:

- immutable files: versioned metadata (``metadata/<N>.<role>.json``: consistent snapshots
  never change a name's bytes) and bundles (``targets/.../<sha256>.<name>``: keyed by their
  sha256) are fetched once per process and kept;
- mutable files (``metadata/timestamp.json``, ``metadata/root.json``) and files that do not
  exist (the TUF client probes ``metadata/<N+1>.root.json`` on every refresh) are fetched
  upstream on every request, unless ``metadata_ttl_s`` > 0 allows a reuse for that long
  (off by default: a stale timestamp would hide a just-published version). Requests for the
  same path that overlap in time share one upstream fetch.

Nothing is trusted because it came from the cache: every device's TUF client verifies the
bytes (signatures, versions, expiry, and the signed length and sha256 of each bundle) exactly
as it would verify the repository's answer. 10,000 devices then do not each pull the same
bundle through the broker, which a fleet benchmark with "downloads excluded" wants.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator

from edgeops.trust.errors import NotFoundError, RepositoryUnavailableError
from edgeops.trust.transport import RepositoryTransport, check_repo_path

_IMMUTABLE_RE = re.compile(r"^(metadata/\d+\.[A-Za-z0-9_.-]+\.json|targets/.+)$")


def is_immutable(path: str) -> bool:
    """True for versioned metadata and target files (their bytes never change for a name)."""
    return bool(_IMMUTABLE_RE.match(path))


class _Inflight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None


class RepoCache:
    """Bytes of repository files shared by the devices of one process (thread-safe)."""

    def __init__(self, metadata_ttl_s: float = 0.0, max_bytes: int = 512 << 20):
        self.metadata_ttl_s = metadata_ttl_s
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._files: dict[str, tuple[bytes, float]] = {}
        self._inflight: dict[str, _Inflight] = {}
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.upstream_bytes = 0

    def _fresh(self, path: str, now: float) -> bytes | None:
        hit = self._files.get(path)
        if hit is None:
            return None
        data, at = hit
        if is_immutable(path) or now - at < self.metadata_ttl_s:
            return data
        return None

    def get(self, path: str, max_length: int, fetch: Callable[[], bytes]) -> bytes:
        """The file's bytes (at most ``max_length + 1``), from the cache or from ``fetch()``."""
        with self._lock:
            data = self._fresh(path, time.monotonic())
            if data is not None:
                self.hits += 1
                return data[: max_length + 1]
            flight = self._inflight.get(path)
            leader = flight is None
            if leader:
                flight = self._inflight[path] = _Inflight()
        if not leader:
            flight.done.wait(300)
            if flight.error is not None:
                raise flight.error
            if flight.data is None:
                raise RepositoryUnavailableError(f"{path}: shared fetch did not finish")
            with self._lock:
                self.hits += 1
            return flight.data[: max_length + 1]
        try:
            data = fetch()
            flight.data = data
        except BaseException as e:
            flight.error = e
            raise
        finally:
            with self._lock:
                self._inflight.pop(path, None)
                if flight.data is not None:
                    self.misses += 1
                    self.upstream_bytes += len(flight.data)
                    cacheable = is_immutable(path) or self.metadata_ttl_s > 0
                    # Only whole files are kept: a read cut at max_length may be shorter than the file.
                    if cacheable and len(flight.data) <= max_length and self._bytes + len(flight.data) <= self.max_bytes:
                        old = self._files.get(path)
                        self._bytes += len(flight.data) - (len(old[0]) if old else 0)
                        self._files[path] = (flight.data, time.monotonic())
            flight.done.set()
        return data[: max_length + 1]

    def stats(self) -> dict:
        """Hits, misses, bytes fetched upstream, bytes held."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "upstream_bytes": self.upstream_bytes, "cached_bytes": self._bytes, "files": len(self._files)}


class CachingTransport:
    """A RepositoryTransport answering from a shared :class:`RepoCache`, else from ``upstream``."""

    def __init__(self, cache: RepoCache, upstream: RepositoryTransport):
        self.cache = cache
        self.upstream = upstream

    def fetch(self, path: str, max_length: int) -> Iterator[bytes]:
        """Yield the file's bytes (NotFoundError / RepositoryUnavailableError as upstream raises them)."""
        check_repo_path(path)

        def pull() -> bytes:
            return b"".join(self.upstream.fetch(path, max_length))

        data = self.cache.get(path, max_length, pull)
        return iter([data]) if data else iter(())


__all__ = ["CachingTransport", "NotFoundError", "RepoCache", "is_immutable"]
