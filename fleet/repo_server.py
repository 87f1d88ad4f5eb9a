"""The repository server: TUF metadata and bundles to devices over MQTT and HTTP, kept fresh.

- MQTT: a :class:`~edgeops.protocol.FetchRequest` on ``edgeops/v1/{d}/fetch/req`` is answered
  on ``edgeops/v1/{d}/fetch/resp`` with one chunk (header + bytes, see
  :func:`edgeops.protocol.encode_fetch_response`); the device asks chunk by chunk, so large
  bundles never sit in memory and an interrupted transfer resumes from its offset.
- HTTP: ``GET {prefix}/metadata/...`` and ``{prefix}/targets/...`` (aiohttp routes added by
  :func:`add_http_routes`), with Range support.
- Both validate every path with :func:`edgeops.trust.transport.check_repo_path` and refuse
  anything that resolves outside the repository folder (symlinks included).
- :class:`RepositoryRefresher` re-signs timestamp and snapshot (and targets) before they
  expire, through :meth:`edgeops.trust.repository.Repository.refresh`.

Malformed requests are counted and dropped; a request for a missing file gets ``not_found``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgeops.protocol import FetchRequest, FetchResponse, encode_fetch_response, fetch_response_topic, parse_message, parse_topic

log = logging.getLogger("edgeops.fleet.repo")


class RepoFiles:
    """Safe reads of repository files by repository path."""

    def __init__(self, repo_dir: str | Path):
        self.root = Path(repo_dir).resolve()

    def resolve(self, path: str) -> Path | None:
        """The file for a repository path, or None when invalid, outside the repository or missing."""
        from edgeops.trust.errors import NotFoundError
        from edgeops.trust.transport import check_repo_path

        try:
            check_repo_path(path)
        except NotFoundError:
            return None
        full = (self.root / path).resolve()
        if self.root not in full.parents or not full.is_file():
            return None
        return full

    def read(self, path: str, offset: int, length: int) -> tuple[bytes, int] | None:
        """(chunk, total size) of ``path`` from ``offset``; None when not served."""
        full = self.resolve(path)
        if full is None:
            return None
        with open(full, "rb") as f:
            total = os.fstat(f.fileno()).st_size
            f.seek(min(offset, total))
            return f.read(max(0, min(length, total - offset))), total


class MqttRepositoryServer:
    """Answers fetch requests; work runs on a small thread pool, off the MQTT network thread."""

    def __init__(self, repo_dir: str | Path, publish: Callable[[str, bytes], object], workers: int = 4):
        self.files = RepoFiles(repo_dir)
        self.publish = publish
        self.stats: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgeops-repo")

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1

    def submit(self, topic: str, payload: bytes) -> None:
        """Called from the MQTT thread for each ``fetch/req`` message."""
        self._pool.submit(self.handle, topic, payload)

    def handle(self, topic: str, payload: bytes) -> bytes | None:
        """Answer one request (returns the published payload, for tests); never raises."""
        try:
            parsed = parse_topic(topic)
            req = parse_message(FetchRequest, payload)
            if parsed is None or req is None:
                self._count("malformed")
                return None
            device = parsed[0]
            got = self.files.read(req.path, req.offset, req.length)
            if got is None:
                self._count("not_found")
                header = FetchResponse(request_id=req.request_id, status="not_found", offset=req.offset, error=f"{req.path}: not in the repository")
                out = encode_fetch_response(header)
            else:
                chunk, total = got
                self._count("served")
                header = FetchResponse(request_id=req.request_id, status="ok", offset=req.offset, total=total, eof=req.offset + len(chunk) >= total)
                out = encode_fetch_response(header, chunk)
            self.publish(fetch_response_topic(device), out)
            return out
        except Exception:
            log.exception("fetch request on %s failed", topic)
            self._count("errors")
            return None

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def add_http_routes(app, repo_dir: str | Path, prefix: str = "/repo") -> None:
    """Serve ``{prefix}/metadata/*`` and ``{prefix}/targets/*`` from the repository folder."""
    from aiohttp import web

    files = RepoFiles(repo_dir)

    async def handler(request: web.Request) -> web.StreamResponse:
        path = request.match_info["kind"] + "/" + request.match_info["rest"]
        full = files.resolve(path)
        if full is None:
            raise web.HTTPNotFound(text=f"{path}: not in the repository\n")
        # metadata changes in place (timestamp.json); clients must not cache it
        headers = {"Cache-Control": "no-store"} if path.startswith("metadata/") else {"Cache-Control": "public, max-age=31536000, immutable"}
        return web.FileResponse(full, headers=headers)

    app.router.add_get(prefix.rstrip("/") + "/{kind:metadata|targets}/{rest:.+}", handler)


class RepositoryRefresher:
    """Re-signs timestamp/snapshot/targets when they come close to expiry (trust layer decides what is due)."""

    def __init__(self, repo_dir: str | Path, keys_dir: str | Path):
        self.repo_dir = Path(repo_dir)
        self.keys_dir = Path(keys_dir)
        self.last_refreshed: list[str] = []
        self.refreshes = 0
        self.errors = 0

    def check(self) -> list[str]:
        """Refresh what is due; returns the roles re-signed (logged, never raised)."""
        from edgeops.trust.keys import Keyring, passphrase_from_env
        from edgeops.trust.repository import Repository

        try:
            repo = Repository(self.repo_dir)
            if not repo.exists():
                return []
            ring = Keyring.load(self.keys_dir, passphrase_from_env())
            if not repo.needs_refresh(ring):
                return []
            done = repo.refresh(ring)
        except Exception as e:
            self.errors += 1
            log.error("refreshing repository %s failed: %s", self.repo_dir, e)
            return []
        if done:
            self.refreshes += 1
            self.last_refreshed = done
            log.info("repository %s: re-signed %s", self.repo_dir, ", ".join(done))
        return done
