"""The one atomic_write: its failure behaviour, and that the agent's state file and store use it."""

from __future__ import annotations

import errno
import os

import pytest

from edgeops.trust import fsutil
from edgeops.trust.fsutil import atomic_write, fsync_dir


def test_the_agent_writes_through_the_same_function():
    import edgeops.agent.statefile as statefile
    import edgeops.agent.store as store

    assert statefile.atomic_write is atomic_write and store.atomic_write is atomic_write and store.fsync_dir is fsync_dir


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic_write(target, b"old")

    def no_rename(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fsutil.os, "replace", no_rename)
    with pytest.raises(OSError):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


@pytest.mark.parametrize("code, raises", [(errno.EINVAL, False), (errno.EIO, True)])
def test_directory_fsync_is_skipped_only_where_unsupported(tmp_path, monkeypatch, code, raises):
    real = os.fsync

    def fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(fsutil.os, "fsync", fsync)
    if raises:
        with pytest.raises(OSError):
            atomic_write(tmp_path / "f", b"x")
    else:
        atomic_write(tmp_path / "f", b"x")
    assert (tmp_path / "f").read_bytes() == b"x"  # the rename happened before the directory fsync
