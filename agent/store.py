"""The content-addressed model store (RAUC's artifact store, on a plain file system).

Layout under ``<data_dir>/store``::

    <sha256>/manifest.json     the bundle's manifest (the directory is named by the bundle's sha256)
    <sha256>/files/...         every file the manifest lists, verified while extracted
    current  -> <sha256>       the version being served (symlink)
    previous -> <sha256>       the version to roll back to (symlink)
    .staging-<sha256>/         an install in progress; removed on start-up and by gc()

An install plans before it writes: it reads the manifest first and checks the declared size
against the store quota and the free disk space; extraction goes to a staging directory that
becomes ``<sha256>`` with one rename, so a version in the store is always complete. Links are
swapped atomically (new link under a temporary name, then ``os.replace``).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from edgeops.bundle import MANIFEST_NAME, Manifest, extract_bundle, sha256_file
from edgeops.errors import AgentError
from edgeops.trust.verify import read_manifest

from edgeops.agent.statefile import atomic_write, fsync_dir

CURRENT = "current"
PREVIOUS = "previous"


class StoreError(AgentError):
    """A store entry is missing, incomplete or does not match its manifest."""


class StoreFullError(StoreError):
    """Not enough room for an install (quota or disk); nothing was changed."""


def _is_enospc(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class ModelStore:
    """Installed model versions by bundle sha256, with ``current``/``previous`` links."""

    def __init__(self, root: Path, quota_bytes: int | None = None):
        self.root = Path(root)
        self.quota_bytes = quota_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    # -- entries -----------------------------------------------------------------------------
    def path(self, sha256: str) -> Path:
        """Directory of a version."""
        return self.root / sha256

    def files_dir(self, sha256: str) -> Path:
        """Folder holding the bundle's files (model/..., golden.json, report.json)."""
        return self.path(sha256) / "files"

    def has(self, sha256: str) -> bool:
        """True when the version is in the store (complete by construction)."""
        return (self.path(sha256) / MANIFEST_NAME).is_file()

    def manifest(self, sha256: str) -> Manifest:
        """The stored manifest of a version."""
        try:
            raw = (self.path(sha256) / MANIFEST_NAME).read_bytes()
        except OSError as e:
            raise StoreError(f"{self.path(sha256)}: not in the store ({e.strerror or e})") from e
        return Manifest.from_json_bytes(raw, str(self.path(sha256) / MANIFEST_NAME))

    def verify(self, sha256: str) -> Manifest:
        """Check every file of a version against its manifest (size and sha256); return the manifest."""
        manifest = self.manifest(sha256)
        base = self.files_dir(sha256)
        for name, entry in manifest.files.items():
            f = base / name
            try:
                size = f.stat().st_size
            except OSError as e:
                raise StoreError(f"{f}: missing from the store ({e.strerror or e})") from e
            if size != entry.size or sha256_file(f) != entry.sha256:
                raise StoreError(f"{f}: does not match its manifest (corrupt store entry)")
        return manifest

    def used_bytes(self) -> int:
        """Bytes used by all versions in the store."""
        total = 0
        for p in self.root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        return total

    def install(self, bundle_path: Path, sha256: str) -> Manifest:
        """Extract a verified bundle file into ``<sha256>/``; idempotent; all or nothing.

        Raises StoreFullError (nothing changed) when the quota or the disk is too small,
        including a disk that fills up during extraction.
        """
        if self.has(sha256):
            return self.manifest(sha256)
        manifest = read_manifest(bundle_path)
        need = sum(e.size for e in manifest.files.values()) + len(manifest.to_json_bytes())
        # Plan before writing: refuse up front when it cannot fit.
        if self.quota_bytes is not None and self.used_bytes() + need > self.quota_bytes:
            raise StoreFullError(f"{self.root}: installing {manifest.name} {manifest.version} needs {need} bytes; the store quota of {self.quota_bytes} bytes would be exceeded")
        free = shutil.disk_usage(self.root).free
        if need > free:
            raise StoreFullError(f"{self.root}: installing {manifest.name} {manifest.version} needs {need} bytes; only {free} free on disk")
        staging = self.root / f".staging-{sha256}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir()
            extract_bundle(bundle_path, staging / "files")
            atomic_write(staging / MANIFEST_NAME, manifest.to_json_bytes())
            os.replace(staging, self.path(sha256))
            fsync_dir(self.root)
        except BaseException as e:
            shutil.rmtree(staging, ignore_errors=True)
            if _is_enospc(e):
                raise StoreFullError(f"{self.root}: disk full while installing {manifest.name} {manifest.version}; nothing was changed") from e
            raise
        return manifest

    def remove(self, sha256: str) -> None:
        """Delete a version (never the one ``current`` points to)."""
        if sha256 == self.current():
            raise StoreError(f"{sha256[:12]} is the current version and cannot be removed")
        shutil.rmtree(self.path(sha256), ignore_errors=True)

    # -- links -------------------------------------------------------------------------------
    def _read_link(self, name: str) -> str | None:
        try:
            target = os.readlink(self.root / name)
        except (FileNotFoundError, OSError):
            return None
        return target if self.has(target) else None

    def current(self) -> str | None:
        """sha256 the ``current`` link points to (None when missing or dangling)."""
        return self._read_link(CURRENT)

    def previous(self) -> str | None:
        """sha256 the ``previous`` link points to (None when missing or dangling)."""
        return self._read_link(PREVIOUS)

    def _set_link(self, name: str, sha256: str | None) -> None:
        link = self.root / name
        if sha256 is None:
            try:
                os.unlink(link)
            except FileNotFoundError:
                pass
        else:
            if not self.has(sha256):
                raise StoreError(f"{sha256[:12]} is not in the store; cannot point {name} at it")
            tmp = self.root / f".{name}.tmp"
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            os.symlink(sha256, tmp)
            os.replace(tmp, link)  # atomic: readers see the old or the new link, never none
        fsync_dir(self.root)

    def set_current(self, sha256: str | None) -> None:
        """Atomically point ``current`` at a version (None removes the link)."""
        self._set_link(CURRENT, sha256)

    def set_previous(self, sha256: str | None) -> None:
        """Atomically point ``previous`` at a version (None removes the link)."""
        self._set_link(PREVIOUS, sha256)

    # -- garbage collection ------------------------------------------------------------------
    def versions(self) -> list[str]:
        """sha256 of every complete version in the store."""
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and self.has(p.name))

    def gc(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Remove staging leftovers and every version that is not current, previous or in ``keep``."""
        protect = set(keep) | {s for s in (self.current(), self.previous()) if s}
        removed = []
        for p in list(self.root.iterdir()):
            if p.name.startswith(".staging-") or (p.is_dir() and not p.is_symlink() and not p.name.startswith(".") and p.name not in protect):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed
