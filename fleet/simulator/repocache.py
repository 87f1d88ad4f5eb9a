"""A per-process repository cache for simulated devices (a simulation shortcut, verified).

Every simulated device runs its own TUF client (``edgeops.trust.client.TrustClient``) over a
:class:`CachingTransport`. The transport answers from a cache shared by the devices of one
simulator process, and asks the real repository (through the device's own transport: MQTT
fetch over that device's session, or HTTP) only for what the cache cannot answer:

- immutable files: versioned metadata (``metadata/<N>.<role>.json``: consistent snapshots
  never change a name's bytes) and bundles (``targets/.../<sha256>.<name>``: keyed by their
  sha256) are fetched once per process and kept;
- mutable answers: ``metadata/timestamp.json``, ``metadata/root.json``, and *not found*
  (the TUF client probes ``metadata/<N+1>.root.json`` on every refresh; the file may appear
  later). How often these reach the repository depends on the device's freshness bound:

  * with a bound (``CachingTransport.not_before``, a ``time.monotonic()`` value): an answer
    whose upstream request was made **at or after** the bound is reused, finished or still
    in flight. The simulated device sets the bound to the moment its latest command arrived
    (:mod:`~edgeops.fleet.simulator.device`), so a device updating for an assignment sees
    the repository as it was at some moment after it received that assignment, exactly what
    its own fetch at that moment would have returned. A wave of 5,000 devices then asks for
    ``timestamp.json`` a few times per process instead of 10,000 times (each device's first
    command also refreshes once for the command keys). Repository answers that were errors
    (unreachable, timed out) are never reused;
  * without a bound (the default; direct users of the cache): fetched upstream on every
    request, except that requests for one path overlapping in time share one upstream
    fetch, and ``metadata_ttl_s`` > 0 allows a reuse for that long (off by default: a stale
    timestamp would hide a just-published version).

Nothing is trusted because it came from the cache: every device's TUF client verifies the
bytes (signatures, versions, expiry, and the signed length and sha256 of each bundle) exactly
as it would verify the repository's answer. 10,000 devices then do not each pull the same
bundle through the broker, which a fleet benchmark with "downloads excluded" wants.

``max_length``: an answer fetched with limit ``L`` holds at most ``L + 1`` bytes; it answers a
request with limit ``R`` only when ``R <= L`` or it holds the whole file.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator

from edgeops.trust.errors import NotFoundError, RepositoryUnavailableError
from edgeops.trust.transport import RepositoryTransport, check_repo_path

_IMMUTABLE_RE = re.compile(r"^(metadata/\d+\.[A-Za-z0-9_.-]+\.json|targets/.+)$")
_WAIT_S = 300.0  # longest a device waits on another device's upstream fetch


def is_immutable(path: str) -> bool:
    """True for versioned metadata and target files (their bytes never change for a name)."""
    return bool(_IMMUTABLE_RE.match(path))


class _Flight:
    """One upstream request for a path: its answer (bytes or not-found) once done."""

    def __init__(self, max_length: int) -> None:
        self.requested_at = time.monotonic()
        self.max_length = max_length
        self.done = threading.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None

    def answers(self, max_length: int) -> bool:
        """True when this answer (once done, with data) covers a request with ``max_length``."""
        if self.data is None:
            return self.error is not None and isinstance(self.error, NotFoundError)
        return max_length <= self.max_length or len(self.data) <= self.max_length


def _result(flight: _Flight, path: str, max_length: int) -> bytes:
    if flight.data is not None:
        return flight.data[: max_length + 1]
    # A shared not-found: a fresh exception per device (tracebacks are per caller).
    raise NotFoundError(str(flight.error) if flight.error else f"{path}: not in the repository")


class RepoCache:
    """Bytes of repository files shared by the devices of one process (thread-safe)."""

    def __init__(self, metadata_ttl_s: float = 0.0, max_bytes: int = 512 << 20):
        self.metadata_ttl_s = metadata_ttl_s
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._files: dict[str, tuple[bytes, float]] = {}
        self._latest: dict[str, _Flight] = {}  # the most recently started upstream request per path
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.shared = 0  # mutable answers reused under a device's freshness bound
        self.upstream_bytes = 0

    def _fresh(self, path: str, now: float) -> bytes | None:
        hit = self._files.get(path)
        if hit is None:
            return None
        data, at = hit
        if is_immutable(path) or now - at < self.metadata_ttl_s:
            return data
        return None

    def _reusable(self, path: str, max_length: int, not_before: float | None) -> _Flight | None:
        """A started or finished upstream answer this request may share (caller holds the lock)."""
        flight = self._latest.get(path)
        if flight is None:
            return None
        done = flight.done.is_set()
        if done and not flight.answers(max_length):
            return None  # an error, or a cut answer too short for this request
        if not done and (not_before is None or is_immutable(path)):
            return flight  # overlaps this request (an immutable file's bytes are the same whenever asked)
        if not_before is not None and flight.requested_at >= not_before:
            return flight
        return None

    def get(self, path: str, max_length: int, fetch: Callable[[], bytes], not_before: float | None = None) -> bytes:
        """The file's bytes (at most ``max_length + 1``), from the cache or from ``fetch()``.

        ``not_before``: reuse mutable answers requested at or after this ``time.monotonic()``
        value (see the module doc); None: only overlapping requests share a fetch.
        Raises what ``fetch`` raises (NotFoundError, RepositoryUnavailableError).
        """
        for _ in range(3):  # a joined flight that cannot answer this request: look again
            with self._lock:
                data = self._fresh(path, time.monotonic())
                if data is not None:
                    self.hits += 1
                    return data[: max_length + 1]
                flight = self._reusable(path, max_length, not_before)
                leader = flight is None
                if leader:
                    flight = self._latest[path] = _Flight(max_length)
            if leader:
                return self._lead(path, max_length, fetch, flight)
            if not flight.done.wait(_WAIT_S):
                raise RepositoryUnavailableError(f"{path}: shared fetch did not finish within {_WAIT_S:.0f}s")
            stale = flight.data is None and not_before is not None and flight.requested_at < not_before
            if flight.answers(max_length) and not stale:
                with self._lock:
                    self.hits += 1
                    if not_before is not None and (flight.data is None or not is_immutable(path)):
                        self.shared += 1
                return _result(flight, path, max_length)
        return self._lead(path, max_length, fetch, None)

    def _lead(self, path: str, max_length: int, fetch: Callable[[], bytes], flight: _Flight | None) -> bytes:
        if flight is None:
            with self._lock:
                flight = self._latest[path] = _Flight(max_length)
        try:
            data = fetch()
            flight.data = data
        except BaseException as e:
            flight.error = e
            raise
        finally:
            with self._lock:
                if flight.data is not None:
                    self.misses += 1
                    self.upstream_bytes += len(flight.data)
                    cacheable = is_immutable(path) or self.metadata_ttl_s > 0
                    # Only whole files are kept: a read cut at max_length may be shorter than the file.
                    if cacheable and len(flight.data) <= max_length and self._bytes + len(flight.data) <= self.max_bytes:
                        old = self._files.get(path)
                        self._bytes += len(flight.data) - (len(old[0]) if old else 0)
                        self._files[path] = (flight.data, time.monotonic())
                if flight.data is not None and is_immutable(path) and path in self._files:
                    self._latest.pop(path, None)  # served from _files from now on
            flight.done.set()
        return data[: max_length + 1]

    def stats(self) -> dict:
        """Hits, misses, answers shared under a freshness bound, bytes fetched upstream, bytes held."""
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "shared": self.shared, "upstream_bytes": self.upstream_bytes, "cached_bytes": self._bytes, "files": len(self._files)}


class CachingTransport:
    """A RepositoryTransport answering from a shared :class:`RepoCache`, else from ``upstream``.

    ``not_before``: the device's freshness bound for mutable answers (see the module doc);
    the simulated device sets it when a command arrives. None: no sharing beyond overlap.
    """

    def __init__(self, cache: RepoCache, upstream: RepositoryTransport):
        self.cache = cache
        self.upstream = upstream
        self.not_before: float | None = None

    def fetch(self, path: str, max_length: int) -> Iterator[bytes]:
        """Yield the file's bytes (NotFoundError / RepositoryUnavailableError as upstream raises them)."""
        check_repo_path(path)

        def pull() -> bytes:
            return b"".join(self.upstream.fetch(path, max_length))

        data = self.cache.get(path, max_length, pull, self.not_before)
        return iter([data]) if data else iter(())


__all__ = ["CachingTransport", "NotFoundError", "RepoCache", "is_immutable"]
