"""Atomic file writes (temp file in the same folder, fsync, os.replace, directory fsync).

The one home of ``atomic_write`` and ``fsync_dir`` for the trust layer, the agent (state file,
store) and the console. Failure behaviour, chosen once: any error while writing, fsyncing or
renaming the temporary file removes it and is raised, and the old file is left as it was. The
directory fsync afterwards is skipped only where the file system cannot fsync a directory
(EINVAL, ENOTSUP, EBADF, EACCES: some FUSE and network mounts); a real I/O error (EIO) is raised.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES})


def fsync_dir(directory: str | Path) -> None:
    """fsync a directory so a rename inside it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in _UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes, mode: int = 0o644, exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one, never a mix.

    ``exclusive`` refuses to replace an existing file (FileExistsError).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive and path.exists():
        raise FileExistsError(str(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if exclusive:
            # link() fails when the name exists: no window in which a concurrent writer is lost.
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path
