"""Keys (files, modes, encryption) and the repository side (publish, downgrade, refresh, rotation)."""

from __future__ import annotations

import json
import stat
from datetime import datetime, timedelta, timezone

import pytest

from edgeops.trust import errors
from edgeops.trust.client import ReleaseFloor, target_path
from edgeops.trust.keys import Keyring, generate_key, load_public_key, load_signer
from edgeops.trust.repository import Repository
from tests.edgeops.trust.helpers import make_bundle, make_world


def test_keyring_files_modes_and_roles(tmp_path):
    ring = Keyring.create(tmp_path / "keys", root_keys=3, root_threshold=2)
    assert ring.role("root").threshold == 2 and len(ring.role("root").keys) == 3
    for role in ("targets", "snapshot", "timestamp", "command"):
        assert len(ring.role(role).keys) == 1
    for key in (tmp_path / "keys").glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert b"ENCRYPTED" not in key.read_bytes()
    assert ring.expiry_days("timestamp") == 1 and ring.expiry_days("root") == 365
    with pytest.raises(errors.KeyFileError, match="exists already"):
        Keyring.create(tmp_path / "keys")


def test_encrypted_key_needs_passphrase(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEOPS_KEY_PASSPHRASE", raising=False)
    pub = generate_key(tmp_path, "k", passphrase="s3cret")
    assert b"ENCRYPTED" in (tmp_path / "k.key").read_bytes()
    with pytest.raises(errors.KeyFileError, match="encrypted"):
        load_signer(tmp_path / "k.key")
    with pytest.raises(errors.KeyFileError, match="wrong passphrase"):
        load_signer(tmp_path / "k.key", "nope")
    assert load_signer(tmp_path / "k.key", "s3cret").public_key.keyid == pub.keyid
    monkeypatch.setenv("EDGEOPS_KEY_PASSPHRASE", "s3cret")
    assert load_signer(tmp_path / "k.key").public_key.keyid == pub.keyid
    assert load_public_key(tmp_path / "k.pub.json").keyid == pub.keyid


def test_publish_refuses_downgrade_and_allow_downgrade_issues_higher_counter(tmp_path):
    w = make_world(tmp_path)  # digits 1.0.0 release 1
    w.repo.publish(make_bundle(tmp_path / "v2.bundle", version="2.0.0", release=5), w.ring)
    old = make_bundle(tmp_path / "v0.bundle", version="0.9.0", release=3)
    with pytest.raises(errors.DowngradeRefusedError, match="not above the published release 5"):
        w.repo.publish(old, w.ring)
    result = w.repo.publish(old, w.ring, allow_downgrade=True)
    assert result.custom["release"] == 6 and result.custom["manifest_release"] == 3 and result.custom["downgrade"]
    # Same bytes again: nothing changes. Same version, other bytes: refused.
    assert w.repo.publish(old, w.ring).unchanged
    with pytest.raises(errors.RepositoryError, match="other content"):
        w.repo.publish(make_bundle(tmp_path / "x.bundle", version="0.9.0", release=7, seed=9), w.ring)
    # The device enforces the signed counter: after committing 2.0.0 (5), the re-issued 0.9.0 (6) installs.
    w.floor.raise_to("digits", 5)
    out = w.install("digits", "0.9.0")
    assert (out / "model" / "model.onnx").exists()


def test_refresh_resigns_due_roles_and_devices_accept(tmp_path):
    w = make_world(tmp_path)
    assert not w.repo.needs_refresh(w.ring)
    later = datetime.now(timezone.utc) + timedelta(hours=13)
    w.repo.clock = lambda: later
    assert w.repo.due_roles(w.ring) == ["timestamp"]
    assert w.repo.refresh(w.ring) == ["timestamp"]
    assert not w.repo.needs_refresh(w.ring)
    w.repo.clock = lambda: later + timedelta(days=5)
    assert set(w.repo.refresh(w.ring)) == {"snapshot", "timestamp"}
    # A device whose clock is 5 days ahead now accepts the repository.
    w.clock_offset = timedelta(days=5, hours=13)
    w.install()


def test_root_rotation_is_followed_by_devices(tmp_path):
    w = make_world(tmp_path)
    w.install()
    new = w.repo.rotate("root", w.ring)
    assert len(new) == 3 and (w.ring.directory / "retired" / "root-1.key").exists()
    w.repo.rotate("timestamp", w.ring)
    w.repo.rotate("command", w.ring)
    client = w.client()
    client.refresh()
    assert client.trusted_versions()["root"] == 4
    assert [k.keyid for k in client.command_keys()] == [k.keyid for k in w.ring.public_keys("command")]
    w.repo.publish(make_bundle(tmp_path / "v2.bundle", version="2.0.0", release=2), w.ring)
    w.install("digits", "2.0.0")


def test_rotation_refused_without_threshold_of_old_root_keys(tmp_path):
    w = make_world(tmp_path)
    for name in w.ring.role("root").keys[:2]:
        (w.ring.directory / f"{name}.key").unlink()  # two of three root keys are offline
    with pytest.raises(errors.KeyFileError, match="1 private key"):
        w.repo.rotate("root", w.ring)
    assert w.repo.root().signed.version == 1


def test_status_and_target_custom(tmp_path):
    w = make_world(tmp_path)
    status = w.repo.status(w.ring)
    assert status["roles"]["timestamp"]["version"] == 2 and not status["needs_refresh"]
    [t] = status["targets"]
    assert t["target"] == target_path("digits", "1.0.0") and t["release"] == 1
    custom = w.client().get_bundle("digits", "1.0.0").custom
    assert set(custom) == {"name", "version", "release", "manifest_release", "profile", "manifest_sha256", "downgrade"}


def test_release_floor_persists_and_never_lowers(tmp_path):
    floor = ReleaseFloor(tmp_path / "floor.json")
    floor.check("m", 0)
    floor.raise_to("m", 4)
    floor.raise_to("m", 2)
    assert ReleaseFloor(tmp_path / "floor.json").get("m") == 4
    floor.check("m", 4)
    with pytest.raises(errors.RollbackError):
        floor.check("m", 3)
    (tmp_path / "floor.json").write_text("{garbage")
    with pytest.raises(errors.TrustError, match="corrupt"):
        floor.check("m", 9)


def test_repository_init_twice_refused(tmp_path):
    w = make_world(tmp_path)
    with pytest.raises(errors.RepositoryError, match="already"):
        Repository.init(w.repo.repo_dir, w.ring)
    assert json.loads((w.repo.metadata_dir / "root.json").read_bytes())["signed"]["consistent_snapshot"] is True
