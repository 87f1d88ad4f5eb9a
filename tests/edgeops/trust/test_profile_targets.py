"""One version built for several hardware profiles: coexisting signed targets (issue 18).

The first profile published keeps the plain target path ``N/V/N-V.bundle``; a further profile
of the same version goes to ``N/V/PROFILE/N-V.bundle`` with the same signed release. A device
verifies either through TUF, and the bundle against the path, the signed custom fields and its
manifest: a profile altered in the metadata or a path naming another profile is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from tuf.api.metadata import TargetFile

from edgeops.bundle import write_bundle
from edgeops.trust import errors
from edgeops.trust.targets import parse_target_path, profile_target_path, target_path
from edgeops.trust.verify import verify_bundle_file
from tests.edgeops.trust.helpers import load_json, make_manifest, make_world, resign, small_payload

VNNI, AVX2 = "x86_64-avx512-vnni", "x86_64-avx2"


def bundle_for(path: Path, profile: str, seed: int, version: str = "1.0.0", release: int = 1) -> Path:
    payload = small_payload(seed)
    write_bundle(path, make_manifest(payload, "digits", version, release, profile=profile), payload)
    return path


def fetch(w, profile: str, tmp: Path):
    """What the agent does: refresh, the profile's signed target, download, verify."""
    client = w.client()
    client.refresh()
    record = client.get_bundle("digits", "1.0.0", profile)
    dest = tmp / f"{profile}.bundle"
    client.download_target(record, dest)
    return record, verify_bundle_file(dest, record)


def test_two_profiles_of_one_version_coexist_and_verify(tmp_path):
    w = make_world(tmp_path)  # digits@1.0.0 for x86_64-avx512-vnni at the plain path
    res = w.repo.publish(bundle_for(tmp_path / "avx2.bundle", AVX2, seed=7), w.ring)
    assert res.target == profile_target_path("digits", "1.0.0", AVX2) == "digits/1.0.0/x86_64-avx2/digits-1.0.0.bundle"
    assert res.custom["profile"] == AVX2 and res.custom["release"] == 1 and not res.unchanged
    paths = {t["target"]: t["profile"] for t in w.repo.status()["targets"]}
    assert paths == {target_path("digits", "1.0.0"): VNNI, res.target: AVX2}
    for profile in (VNNI, AVX2):
        record, verdict = fetch(w, profile, tmp_path)
        assert record.profile == verdict.manifest.profile == profile
    # the same bytes again: nothing changes
    assert w.repo.publish(tmp_path / "avx2.bundle", w.ring).unchanged


def test_a_profile_without_a_target_is_named(tmp_path):
    w = make_world(tmp_path)
    client = w.client()
    client.refresh()
    with pytest.raises(errors.UnknownTargetError, match=r"no target built for profile 'aarch64-neon'.*built for profile 'x86_64-avx512-vnni'"):
        client.get_bundle("digits", "1.0.0", "aarch64-neon")


@pytest.mark.parametrize("profile", [VNNI, AVX2])
def test_same_version_and_profile_with_other_bytes_is_refused(tmp_path, profile):
    w = make_world(tmp_path)
    w.repo.publish(bundle_for(tmp_path / "avx2.bundle", AVX2, seed=7), w.ring)
    before = w.repo.targets().signed.version
    with pytest.raises(errors.RepositoryError, match=rf"digits@1.0.0 for profile {profile} is already published .* with other content"):
        w.repo.publish(bundle_for(tmp_path / "other.bundle", profile, seed=99), w.ring)
    assert w.repo.targets().signed.version == before


def test_a_further_profile_must_carry_the_versions_release(tmp_path):
    w = make_world(tmp_path)
    with pytest.raises(errors.RepositoryError, match=r"has release 2, but this version is published for profile\(s\) x86_64-avx512-vnni \(release 1\)"):
        w.repo.publish(bundle_for(tmp_path / "avx2.bundle", AVX2, seed=7, release=2), w.ring)
    # a new version still needs a higher release than every published one
    with pytest.raises(errors.DowngradeRefusedError):
        w.repo.publish(bundle_for(tmp_path / "v2.bundle", AVX2, seed=8, version="2.0.0", release=1), w.ring)


def test_a_profile_altered_in_the_metadata_without_the_key_fails_verification(tmp_path):
    w = make_world(tmp_path)
    res = w.repo.publish(bundle_for(tmp_path / "avx2.bundle", AVX2, seed=7), w.ring)
    # an attacker on the server edits the newest targets metadata: the avx2 target now claims vnni
    version = w.repo.targets().signed.version
    path = w.repo.metadata_dir / f"{version}.targets.json"
    data = load_json(path)
    data["signed"]["targets"][res.target]["custom"]["profile"] = VNNI
    path.write_bytes(__import__("json").dumps(data).encode())
    client = w.client()  # a device that has not cached this targets version yet
    with pytest.raises(errors.TrustError) as e:
        client.refresh()
        client.get_bundle("digits", "1.0.0", AVX2)
    assert "targets" in str(e.value), e.value


def test_a_signed_profile_that_does_not_match_the_bundle_is_refused(tmp_path):
    """An insider with the targets key signs the avx2 bundle's target as vnni's: the device's
    verification of the bundle (manifest profile vs signed profile) refuses it."""
    w = make_world(tmp_path)
    res = w.repo.publish(bundle_for(tmp_path / "avx2.bundle", AVX2, seed=7), w.ring)

    def relabel(t):
        old = t.targets[res.target]
        t.targets[res.target] = TargetFile(old.length, dict(old.hashes), old.path, unrecognized_fields={"custom": {**old.unrecognized_fields["custom"], "profile": "aarch64-neon"}})

    resign(w.repo, w.ring, "targets", mutate=relabel)
    client = w.client()
    client.refresh()
    record = client.get_target(res.target)
    dest = client.download_target(record, tmp_path / "x.bundle")
    with pytest.raises(errors.HashMismatchError, match="signed custom profile='aarch64-neon' does not match the bundle's 'x86_64-avx2'"):
        verify_bundle_file(dest, record)


def test_a_path_naming_another_profile_is_refused(tmp_path):
    """The avx2 bundle served under a path that names vnni (custom fields intact) is not its target."""
    w = make_world(tmp_path)
    res = w.repo.publish(bundle_for(tmp_path / "avx2.bundle", AVX2, seed=7), w.ring)
    client = w.client()
    client.refresh()
    record = client.get_target(res.target)
    dest = client.download_target(record, tmp_path / "x.bundle")
    moved = dataclasses.replace(record, name=profile_target_path("digits", "1.0.0", VNNI))
    with pytest.raises(errors.UnknownTargetError, match="should be target"):
        verify_bundle_file(dest, moved)


def test_target_paths_parse_both_forms():
    assert parse_target_path("digits/1.0.0/digits-1.0.0.bundle") == ("digits", "1.0.0", None)
    assert parse_target_path("digits/1.0.0/x86_64-avx2/digits-1.0.0.bundle") == ("digits", "1.0.0", "x86_64-avx2")
    for bad in ("digits/1.0.0/other.bundle", "digits/1.0.0/x/other-1.0.0.bundle", "a/b", "digits/1.0.0/../digits-1.0.0.bundle"):
        assert parse_target_path(bad) is None
    with pytest.raises(ValueError, match="cannot name a target path"):
        profile_target_path("digits", "1.0.0", "../etc")
