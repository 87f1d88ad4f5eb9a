"""The content-addressed model store (RAUC's artifact store, on a plain file system).

Layout under ``<data_dir>/store``::

    <sha256>/manifest.json     the bundle's manifest (the directory is named by the bundle's sha256)
    <sha256>/files/...         every file the manifest lists, verified while extracted
    current  -> <sha256>       the version being served (symlink)
    previous -> <sha256>       the version to roll back to (symlink)
    .staging-<sha256>/         a version being verified, or verified and not yet renamed;
                               removed by gc() (which runs only at rest)

Bundles are read once (RAUC's model): :meth:`ModelStore.stage` runs the one verifying pass
(:func:`edgeops.trust.verify.extract_verified`: the signed target's length and sha256, every
member against the manifest) and writes the members into ``.staging-<sha256>/files`` while it
checks them. It plans before it writes: as soon as the manifest (the bundle's first member) is
read, the declared size is checked against the store quota and the free disk space, and the
caller's ``check`` (the device's profile and runtime) runs, before any member reaches the
disk. On any failure the staging folder is removed. Only a complete pass writes
``manifest.json`` into it, last; :meth:`ModelStore.commit_staged` then makes it ``<sha256>``
with one rename, so a version in the store is always complete and was verified on its way in.
Links are swapped atomically (new link under a temporary name, then ``os.replace``).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable

from edgeops.bundle import MANIFEST_NAME, Manifest, sha256_file
from edgeops.errors import AgentError
from edgeops.trust.fsutil import atomic_write, fsync_dir
from edgeops.trust.targets import TargetRecord
from edgeops.trust.verify import extract_verified

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

    def staging_path(self, sha256: str) -> Path:
        """Folder of a version being verified (or verified and not yet renamed into the store)."""
        return self.root / f".staging-{sha256}"

    def staged(self, sha256: str) -> bool:
        """True when a complete, verified version waits in staging (its manifest is written last)."""
        return (self.staging_path(sha256) / MANIFEST_NAME).is_file()

    def stage(self, bundle_path: Path, sha256: str, target: TargetRecord | None = None, check: Callable[[Manifest], None] | None = None) -> Manifest:
        """The one pass: verify ``bundle_path`` and write its members into staging while checking them.

        The whole file must have ``sha256`` (the content address; with ``target``, also the
        signed length and custom fields). As soon as the manifest is read, before any member
        is written: StoreFullError (nothing changed) when the quota or the disk is too small,
        and ``check(manifest)`` may refuse the bundle. Any failure (BundleError, TrustError,
        StoreFullError also for a disk that fills up mid-way) leaves no staging folder.
        Restarting it is safe: a leftover staging folder is replaced.
        """
        if target is not None and target.sha256 != sha256:
            raise StoreError(f"{self.root}: target {target.name} has sha256 {target.sha256[:12]}, not {sha256[:12]}")
        staging = self.staging_path(sha256)
        shutil.rmtree(staging, ignore_errors=True)

        def plan(manifest: Manifest) -> None:
            if check is not None:
                check(manifest)
            self._check_room(manifest)

        try:
            staging.mkdir()
            manifest = extract_verified(bundle_path, staging / "files", target, sha256=sha256, on_manifest=plan).manifest
            atomic_write(staging / MANIFEST_NAME, manifest.to_json_bytes())  # last: marks the staging complete
        except BaseException as e:
            shutil.rmtree(staging, ignore_errors=True)
            if _is_enospc(e):
                raise StoreFullError(f"{self.root}: disk full while installing {bundle_path}; nothing was changed") from e
            raise
        return manifest

    def _check_room(self, manifest: Manifest) -> None:
        need = sum(e.size for e in manifest.files.values()) + len(manifest.to_json_bytes())
        if self.quota_bytes is not None and self.used_bytes() + need > self.quota_bytes:
            raise StoreFullError(f"{self.root}: installing {manifest.name} {manifest.version} needs {need} bytes; the store quota of {self.quota_bytes} bytes would be exceeded")
        free = shutil.disk_usage(self.root).free
        if need > free:
            raise StoreFullError(f"{self.root}: installing {manifest.name} {manifest.version} needs {need} bytes; only {free} free on disk")

    def commit_staged(self, sha256: str) -> Manifest:
        """Install what :meth:`stage` verified: one rename of the staging folder; idempotent."""
        if self.has(sha256):
            return self.manifest(sha256)
        staging = self.staging_path(sha256)
        if not self.staged(sha256):
            raise StoreError(f"{staging}: no complete verified staging for {sha256[:12]}; verify the bundle again")
        os.replace(staging, self.path(sha256))
        fsync_dir(self.root)
        return self.manifest(sha256)

    def install(self, bundle_path: Path, sha256: str, target: TargetRecord | None = None, check: Callable[[Manifest], None] | None = None) -> Manifest:
        """:meth:`stage` then :meth:`commit_staged`: verify and install in one pass; idempotent; all or nothing."""
        if self.has(sha256):
            return self.manifest(sha256)
        self.stage(bundle_path, sha256, target, check)
        return self.commit_staged(sha256)

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
