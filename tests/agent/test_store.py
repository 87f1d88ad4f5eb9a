"""The content-addressed store: install, verify, atomic link swaps, GC, full disk."""

from __future__ import annotations

import errno
import os

import pytest

from edgeops.agent.store import ModelStore, StoreError, StoreFullError
from edgeops.bundle import sha256_file
from tests.support.bundles import write_test_bundle


@pytest.fixture()
def bundles(tmp_path):
    out = {}
    for i, v in enumerate(("1.0.0", "2.0.0", "3.0.0")):
        p = tmp_path / f"b{v}.bundle"
        write_test_bundle(p, version=v, release=i + 1, seed=i)
        out[v] = (p, sha256_file(p))
    return out


def test_install_is_complete_and_verified(tmp_path, bundles):
    store = ModelStore(tmp_path / "store")
    path, sha = bundles["1.0.0"]
    m = store.install(path, sha)
    assert store.has(sha) and store.verify(sha).version == m.version == "1.0.0"
    assert (store.files_dir(sha) / "model" / "model.onnx").is_file()
    assert store.install(path, sha) == m  # idempotent
    assert not list(store.root.glob(".staging-*"))


def test_verify_detects_a_corrupted_file(tmp_path, bundles):
    store = ModelStore(tmp_path / "store")
    path, sha = bundles["1.0.0"]
    store.install(path, sha)
    f = store.files_dir(sha) / "model" / "model.onnx"
    os.chmod(f, 0o644)
    f.write_bytes(f.read_bytes()[:-1] + b"\x00")
    with pytest.raises(StoreError, match="does not match"):
        store.verify(sha)


def test_links_swap_atomically_and_refuse_missing_versions(tmp_path, bundles):
    store = ModelStore(tmp_path / "store")
    (p1, s1), (p2, s2) = bundles["1.0.0"], bundles["2.0.0"]
    store.install(p1, s1)
    store.install(p2, s2)
    store.set_current(s1)
    assert store.current() == s1 and store.previous() is None
    store.set_previous(s1)
    store.set_current(s2)
    assert (store.current(), store.previous()) == (s2, s1)
    assert os.path.islink(store.root / "current") and not (store.root / ".current.tmp").exists()
    with pytest.raises(StoreError):
        store.set_current("f" * 64)
    with pytest.raises(StoreError, match="current"):
        store.remove(s2)


def test_gc_keeps_current_and_previous_only(tmp_path, bundles):
    store = ModelStore(tmp_path / "store")
    shas = []
    for p, s in bundles.values():
        store.install(p, s)
        shas.append(s)
    (store.root / ".staging-leftover").mkdir()
    store.set_current(shas[2])
    store.set_previous(shas[1])
    removed = store.gc()
    assert shas[0] in removed and ".staging-leftover" in removed
    assert store.versions() == sorted(shas[1:])


def test_quota_refuses_before_writing(tmp_path, bundles):
    path, sha = bundles["1.0.0"]
    store = ModelStore(tmp_path / "store", quota_bytes=1000)
    with pytest.raises(StoreFullError, match="quota"):
        store.install(path, sha)
    assert not store.has(sha) and list(store.root.iterdir()) == []


def test_disk_full_during_extraction_leaves_nothing(tmp_path, bundles, monkeypatch):
    """ENOSPC in the middle of writing a member: clean abort, StoreFullError, no partial entry."""
    from edgeops.trust.verify import FolderSink

    store = ModelStore(tmp_path / "store")
    (p1, s1), (p2, s2) = bundles["1.0.0"], bundles["2.0.0"]
    store.install(p1, s1)
    store.set_current(s1)
    real = FolderSink.begin
    calls = {"n": 0}

    def filling_up(self, name, size):
        calls["n"] += 1
        real(self, name, size)
        if calls["n"] == 2:  # the second member: some bytes are written, then the disk is full
            self._out.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(FolderSink, "begin", filling_up)
    with pytest.raises(StoreFullError, match="disk full"):
        store.install(p2, s2)
    assert not store.has(s2)
    assert not [p for p in store.root.iterdir() if p.name.startswith(".staging")]
    assert store.current() == s1 and store.verify(s1).version == "1.0.0"
