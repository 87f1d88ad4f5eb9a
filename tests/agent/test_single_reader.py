"""The one bundle reader as the store uses it: one pass verifies and writes into staging,
installing renames what was verified, and a bad member is refused during the pass with
nothing left in staging."""

from __future__ import annotations

import builtins
import os
import tarfile

import pytest

from edgeops.agent.store import ModelStore, StoreError, StoreFullError
from edgeops.bundle import sha256_file
from edgeops.errors import BundleError
from edgeops.trust import errors
from edgeops.trust.verify import FolderSink
from tests.support.bundles import write_test_bundle


@pytest.fixture()
def bundle(tmp_path):
    p = tmp_path / "b.bundle"
    write_test_bundle(p, version="1.0.0", release=1)
    return p, sha256_file(p)


def _tamper_member(src, dst, member: str) -> None:
    """Copy ``src`` with one byte of ``member``'s data flipped (its tar header unchanged)."""
    with tarfile.open(src) as tar:
        offset = tar.getmember(member).offset_data
    data = bytearray(src.read_bytes())
    data[offset] ^= 0xFF
    dst.write_bytes(bytes(data))


def _record_begun(monkeypatch) -> list[str]:
    begun: list[str] = []
    real = FolderSink.begin

    def begin(self, name, size):
        begun.append(name)
        real(self, name, size)

    monkeypatch.setattr(FolderSink, "begin", begin)
    return begun


def test_install_opens_the_bundle_once_and_renames_what_was_verified(tmp_path, bundle, monkeypatch):
    path, sha = bundle
    store = ModelStore(tmp_path / "store")
    opened = []
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == os.fspath(path):
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    store.stage(path, sha)
    monkeypatch.setattr(builtins, "open", real_open)
    assert len(opened) == 1, "the bundle file is read in one pass"
    assert store.staged(sha) and not store.has(sha)
    staged_model = store.staging_path(sha) / "files" / "model" / "model.onnx"
    inode = staged_model.stat().st_ino
    m = store.commit_staged(sha)
    assert store.has(sha) and not store.staging_path(sha).exists()
    assert (store.files_dir(sha) / "model" / "model.onnx").stat().st_ino == inode, "installing is a rename, not a copy"
    assert store.verify(sha) == m and store.commit_staged(sha) == m  # idempotent


@pytest.mark.parametrize("signed", ["the original", "the tampered file"])
def test_a_tampered_member_is_refused_during_the_pass_and_nothing_is_left(tmp_path, bundle, monkeypatch, signed):
    """golden.json (the first member after the manifest) is corrupt: the pass stops there,
    before any later member reaches staging; the staging folder is gone."""
    path, sha = bundle
    bad = tmp_path / "bad.bundle"
    _tamper_member(path, bad, "golden.json")
    # Expecting the original's digest: a trust failure (not the file that was assigned). The
    # tampered file's own digest (a publisher signed an inconsistent bundle): a bundle error.
    expect, error = (sha, errors.HashMismatchError) if signed == "the original" else (sha256_file(bad), BundleError)
    store = ModelStore(tmp_path / "store")
    begun = _record_begun(monkeypatch)
    with pytest.raises(error, match="golden.json"):
        store.stage(bad, expect)
    assert begun == ["golden.json"], "no member after the bad one was written"
    assert list(store.root.iterdir()) == [], "nothing left in staging"
    assert not store.staged(expect) and not store.has(expect)
    with pytest.raises(StoreError, match="verify the bundle again"):
        store.commit_staged(expect)


def test_the_manifest_check_and_the_space_plan_run_before_any_member_is_written(tmp_path, bundle, monkeypatch):
    path, sha = bundle
    begun = _record_begun(monkeypatch)

    def other_device(manifest):
        raise BundleError(f"bundle {manifest.name} is for another profile")

    store = ModelStore(tmp_path / "store")
    with pytest.raises(BundleError, match="another profile"):
        store.stage(path, sha, check=other_device)
    full = ModelStore(tmp_path / "full", quota_bytes=100)
    with pytest.raises(StoreFullError, match="quota"):
        full.stage(path, sha)
    assert begun == []
    assert list(store.root.iterdir()) == [] and list(full.root.iterdir()) == []


def test_every_regular_file_the_manifest_lists_is_extracted(tmp_path):
    """Not only the model: extra data files the manifest lists (ONNX external data, OpenVINO .bin)."""
    from edgeops.bundle import Manifest, describe_files, read_bundle, write_bundle

    base = tmp_path / "base.bundle"
    write_test_bundle(base, version="1.0.0", release=1)
    contents = read_bundle(base)
    payload = {**contents.files, "model/model.onnx.data": b"\x01" * 3000, "model/extra/weights.bin": b"\x02" * 10}
    m = contents.manifest.replace(files=describe_files(payload))
    assert isinstance(m, Manifest)
    out = write_bundle(tmp_path / "extra.bundle", m, payload)
    store = ModelStore(tmp_path / "store")
    sha = sha256_file(out)
    store.install(out, sha)
    files = store.files_dir(sha)
    assert (files / "model" / "model.onnx.data").read_bytes() == payload["model/model.onnx.data"]
    assert (files / "model" / "extra" / "weights.bin").read_bytes() == payload["model/extra/weights.bin"]
    assert store.verify(sha).files == m.files
