"""One-pass bundle verification (edgeops.trust.verify) and the client's cache behaviour."""

from __future__ import annotations

import dataclasses

import pytest

from edgeops.errors import BundleError
from edgeops.trust import errors
from edgeops.trust.client import TrustClient
from edgeops.trust.transport import DirectoryTransport
from edgeops.trust.verify import BundleScanner, read_manifest, verify_bundle_bytes, verify_bundle_file
from tests.edgeops.trust.helpers import make_bundle, make_world, malicious_bundle, published_file, sign_raw_target


def test_verify_matches_and_chunking_does_not_matter(tmp_path):
    w = make_world(tmp_path)
    rec = w.client().get_bundle("digits", "1.0.0")
    path = published_file(w)
    for read_bytes in (1, 511, 512, 513, 4096, 1 << 22):
        v = verify_bundle_file(path, rec, read_bytes=read_bytes)
        assert v.sha256 == rec.sha256 and v.manifest.name == "digits"
    data = path.read_bytes()
    scanner = BundleScanner()
    for i in range(0, len(data), 7):
        scanner.feed(data[i : i + 7])
    assert scanner.finish().members[0] == "manifest.json"
    assert read_manifest(path).version == "1.0.0"


def test_signed_length_checked_before_reading(tmp_path):
    w = make_world(tmp_path)
    rec = w.client().get_bundle("digits", "1.0.0")
    big = tmp_path / "big.bundle"
    big.write_bytes(published_file(w).read_bytes() + bytes(512))
    with pytest.raises(errors.LengthError):
        verify_bundle_file(big, rec)


def test_custom_fields_must_describe_the_bundle(tmp_path):
    w = make_world(tmp_path)
    rec = w.client().get_bundle("digits", "1.0.0")
    data = published_file(w).read_bytes()
    lying = dataclasses.replace(rec, custom={**rec.custom, "manifest_sha256": "0" * 64})
    with pytest.raises(errors.HashMismatchError, match="manifest_sha256"):
        verify_bundle_bytes(data, lying)
    other_path = dataclasses.replace(rec, name="digits/1.0.0/other.bundle")
    with pytest.raises(errors.UnknownTargetError):
        verify_bundle_bytes(data, other_path)


def test_signed_but_inconsistent_bundle_is_a_bundle_error(tmp_path):
    w = make_world(tmp_path)
    from tests.edgeops.trust.helpers import reg

    sign_raw_target(w.repo, w.ring, malicious_bundle([reg("extra", b"x")], version="6.6.6"), version="6.6.6")
    rec = w.client().get_bundle("digits", "6.6.6")
    path = tmp_path / "x.bundle"
    w.client().download_target(rec, path)
    with pytest.raises(BundleError, match="not listed"):
        verify_bundle_file(path, rec)


def test_client_uses_cached_root_and_requires_an_anchor(tmp_path):
    w = make_world(tmp_path)
    w.client().refresh()
    cached = TrustClient(w.metadata_dir, DirectoryTransport(w.repo.repo_dir))
    cached.refresh()
    assert cached.trusted_versions()["targets"] == 2
    with pytest.raises(errors.KeyFileError, match="provision"):
        TrustClient(tmp_path / "empty", DirectoryTransport(w.repo.repo_dir))


def test_download_target_leaves_nothing_on_failure(tmp_path):
    w = make_world(tmp_path)
    rec = w.client().get_bundle("digits", "1.0.0")
    published_file(w).write_bytes(make_bundle(tmp_path / "o.bundle", seed=5).read_bytes())
    dest = tmp_path / "dl" / "x.bundle"
    with pytest.raises(errors.HashMismatchError):
        w.client().download_target(rec, dest)
    assert list((tmp_path / "dl").iterdir()) == []
