"""The threat table: one row per attack, each refused with its typed error and nothing installed.

Every row runs against a fresh world: a repository with one published bundle and a device that
has already synced it and installed it (so there is trusted state to roll back from). A row's
``setup`` may change the repository or do legitimate device steps; then the device's state is
recorded; then ``action`` runs the attack through the device's real install path
(TrustClient refresh -> target lookup -> release floor -> download -> safe extraction) or its
command verifier. The row passes when the exact error type is raised and the device persisted
nothing: same metadata cache (unless the attack's metadata is genuinely signed, as for a
compromised build), no new files in the store, the download area empty, floor and command
state untouched.
"""

from __future__ import annotations

import gzip
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Root

from edgeops.errors import BundleError
from edgeops.protocol import Command
from edgeops.trust import errors
from edgeops.trust.client import target_path
from edgeops.trust.commands import CommandVerifier, check_assignment, sign_command
from tests.edgeops.trust.helpers import (
    NOW,
    World,
    file_state,
    link,
    make_bundle,
    make_manifest,
    make_world,
    malicious_bundle,
    published_file,
    reg,
    resign,
    sign_raw_target,
    small_payload,
)

DAY = timedelta(days=1)


@dataclass
class Threat:
    id: str
    expected: type[Exception]
    action: Callable[[World], object]
    setup: Callable[[World], None] | None = None
    # True: the attack's metadata is genuinely signed, so the cache may advance; a tuple names
    # the cached files that must stay unchanged while the others (validly signed) may advance.
    metadata_valid: bool | tuple[str, ...] = False


# ----------------------------------------------------------------------- bundle bytes
def _flip_byte_in_published(w: World) -> None:
    path = published_file(w)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _tamper_manifest_in_published(w: World) -> None:
    path = published_file(w)
    data = path.read_bytes()
    assert b'"release": 1' in data
    path.write_bytes(data.replace(b'"release": 1', b'"release": 9', 1))


def _signed_bad_bundle(w: World, blob: bytes, version: str = "6.6.6") -> None:
    sign_raw_target(w.repo, w.ring, blob, version=version)


def _install_bad(w: World):
    return w.install("digits", "6.6.6")


def _manifest_lies(w: World) -> None:
    payload = small_payload(seed=1)
    manifest = make_manifest(payload, version="6.6.6")
    payload["model/model.onnx"] = payload["model/model.onnx"][::-1]  # same size, other bytes
    _signed_bad_bundle(w, malicious_bundle([], payload=payload, manifest=manifest))


def _extra_member(w: World) -> None:
    _signed_bad_bundle(w, malicious_bundle([reg("model/extra.bin", b"not listed")], version="6.6.6"))


def _traversal(name: str) -> Callable[[World], None]:
    return lambda w: _signed_bad_bundle(w, malicious_bundle([reg(name, b"owned")], version="6.6.6"))


def _link_member(kind: bytes) -> Callable[[World], None]:
    return lambda w: _signed_bad_bundle(w, malicious_bundle([link("model/evil", "/etc/passwd", kind)], version="6.6.6"))


def _gzip_bomb(w: World) -> None:
    # A bundle compressed with gzip (bundles are uncompressed tar): refused before inflating anything.
    inner = malicious_bundle([reg("zeros.bin", bytes(8 << 20))], version="6.6.6")
    _signed_bad_bundle(w, gzip.compress(inner, 9))


def _oversized_member(w: World) -> None:
    # Correctly built and signed, but bigger than the device's extraction cap (1 MiB in World.install).
    big = make_bundle(w.tmp / "big.bundle", version="6.6.6", release=2, size=2 << 20)
    w.repo.publish(big, w.ring)


def _declared_bomb(w: World) -> None:
    payload = small_payload()
    manifest = make_manifest(payload, version="6.6.6")
    manifest.files["model/model.onnx"].size = 50 << 30  # claims 50 GiB
    _signed_bad_bundle(w, malicious_bundle([], payload=payload, manifest=manifest))


def _endless_target(w: World) -> None:
    path = published_file(w)
    with open(path, "ab") as f:
        f.write(bytes(1 << 20))


def _endless_metadata(w: World) -> None:
    ts = w.repo.metadata_dir / "timestamp.json"
    ts.write_bytes(ts.read_bytes() + b" " * 40000)


# ----------------------------------------------------------------------- metadata
def _attacker_signs(role: str) -> Callable[[World], None]:
    def setup(w: World) -> None:
        # Roles above ``role`` in the chain are re-signed with the real keys (server compromised,
        # those online keys too); ``role`` itself only with the attacker's key.
        resign(w.repo, w.ring, role, signers=[CryptoSigner.generate_ed25519()])

    return setup


def _root_below_threshold(w: World) -> None:
    resign(w.repo, w.ring, "root", signers=w.ring.signers("root")[:1])


def _rotation_too_few_old(w: World) -> None:
    old = w.ring.signers("root")
    new = [CryptoSigner.generate_ed25519() for _ in range(3)]

    def swap_keys(root: Root) -> None:
        for key in w.ring.public_keys("root"):
            root.revoke_key(key.keyid, "root")
        for s in new:
            root.add_key(s.public_key, "root")

    resign(w.repo, w.ring, "root", signers=old[:1] + new, mutate=swap_keys)


def _expire_setup(roles_long: tuple[str, ...]) -> Callable[[World], None]:
    def setup(w: World) -> None:
        for role in roles_long:
            resign(w.repo, w.ring, role, expires=(NOW + timedelta(days=800)).replace(microsecond=0))
        w.client().refresh()  # the device syncs the long-lived state first

    return setup


def _later(days: float) -> Callable[[World], object]:
    def action(w: World):
        w.clock_offset = timedelta(days=days)
        return w.install()

    return action


def _rollback_timestamp_setup(w: World) -> None:
    w.old_ts = (w.repo.metadata_dir / "timestamp.json").read_bytes()
    w.repo.publish(make_bundle(w.tmp / "v2.bundle", version="2.0.0", release=2), w.ring)
    w.client().refresh()


def _rollback_timestamp(w: World):
    (w.repo.metadata_dir / "timestamp.json").write_bytes(w.old_ts)
    return w.install()


def _rollback_snapshot(w: World):
    old_version = w.repo.timestamp().signed.snapshot_meta.version - 1
    from tuf.api.metadata import MetaFile

    # The timestamp key is compromised: a new timestamp names an older snapshot.
    resign(w.repo, w.ring, "timestamp", mutate=lambda t: setattr(t, "snapshot_meta", MetaFile(old_version)))
    return w.install()


def _rollback_targets(w: World):
    old = w.repo.snapshot().signed.meta["targets.json"].version - 1
    from tuf.api.metadata import MetaFile

    resign(w.repo, w.ring, "snapshot", mutate=lambda s: s.meta.__setitem__("targets.json", MetaFile(old)))
    return w.install()


def _rollback_root_setup(w: World) -> None:
    resign(w.repo, w.ring, "root")  # root v2, same keys
    w.client().refresh()


def _rollback_root(w: World):
    (w.repo.metadata_dir / "3.root.json").write_bytes((w.repo.metadata_dir / "1.root.json").read_bytes())
    return w.install()


def _release_setup(w: World) -> None:
    w.repo.publish(make_bundle(w.tmp / "v2.bundle", version="2.0.0", release=2), w.ring)
    w.install("digits", "2.0.0")
    w.floor.raise_to("digits", 2)  # committed


def _mix_setup(role: str) -> Callable[[World], None]:
    def setup(w: World) -> None:
        if role == "targets":
            v = w.repo.snapshot().signed.meta["targets.json"].version
            w.old_meta = (w.repo.metadata_dir / f"{v}.targets.json").read_bytes()
        else:
            v = w.repo.timestamp().signed.snapshot_meta.version
            w.old_meta = (w.repo.metadata_dir / f"{v}.snapshot.json").read_bytes()
        # The repository moves on; the device has not seen it yet.
        w.repo.publish(make_bundle(w.tmp / "v2.bundle", version="2.0.0", release=2), w.ring)

    return setup


def _mix(role: str) -> Callable[[World], object]:
    def action(w: World):
        if role == "targets":
            v = w.repo.snapshot().signed.meta["targets.json"].version
        else:
            v = w.repo.timestamp().signed.snapshot_meta.version
        (w.repo.metadata_dir / f"{v}.{role}.json").write_bytes(w.old_meta)
        return w.install("digits", "2.0.0")

    return action


# ----------------------------------------------------------------------- commands
def _verifier(w: World) -> CommandVerifier:
    return CommandVerifier("dev-1", w.ring.public_keys("command"), w.device / "command-state.json", cohorts={"canary"})


def _command(w: World, **kw) -> Command:
    record = w.client().get_bundle("digits", "1.0.0")
    fields = dict(device_id="dev-1", command_id="c-1", seq=5, expires=time.time() + 600, kind="assign", target_name=record.name, target_sha256=record.sha256, target_length=record.length)
    fields.update(kw)
    return Command(**fields)


def _signed(w: World, **kw) -> bytes:
    return sign_command(_command(w, **kw), w.ring.signers("command")[0])


def _accept_first(w: World) -> None:
    w.envelope = _signed(w)
    _verifier(w).verify(w.envelope)


def _assignment_mismatch(w: World):
    cmd = _verifier(w).verify(_signed(w, seq=9, target_sha256=hashlib.sha256(b"other").hexdigest()))
    return check_assignment(cmd, w.client().get_bundle("digits", "1.0.0"))


THREATS = [
    Threat("tampered-bundle-byte", errors.HashMismatchError, lambda w: w.install(), _flip_byte_in_published),
    Threat("tampered-manifest", errors.HashMismatchError, lambda w: w.install(), _tamper_manifest_in_published),
    Threat("signed-manifest-lies", BundleError, _install_bad, _manifest_lies, metadata_valid=True),
    Threat("file-not-in-manifest", BundleError, _install_bad, _extra_member, metadata_valid=True),
    Threat("wrong-signing-key", errors.SignatureError, lambda w: w.install(), _attacker_signs("timestamp")),
    Threat("wrong-signing-key-targets", errors.SignatureError, lambda w: w.install(), _attacker_signs("targets"), metadata_valid=("targets.json",)),
    Threat("wrong-signing-key-snapshot", errors.SignatureError, lambda w: w.install(), _attacker_signs("snapshot"), metadata_valid=("snapshot.json", "targets.json")),
    Threat("below-threshold-signatures", errors.ThresholdError, lambda w: w.install(), _root_below_threshold),
    Threat("rotation-too-few-old-signatures", errors.ThresholdError, lambda w: w.install(), _rotation_too_few_old),
    Threat("expired-timestamp", errors.ExpiredError, _later(2)),
    Threat("expired-snapshot", errors.ExpiredError, _later(8), _expire_setup(("timestamp",))),
    Threat("expired-targets", errors.ExpiredError, _later(91), _expire_setup(("snapshot", "timestamp"))),
    Threat("expired-root", errors.ExpiredError, _later(366), _expire_setup(("targets", "snapshot", "timestamp"))),
    Threat("rollback-timestamp", errors.RollbackError, _rollback_timestamp, _rollback_timestamp_setup),
    Threat("rollback-snapshot", errors.RollbackError, _rollback_snapshot),
    Threat("rollback-targets", errors.RollbackError, _rollback_targets, metadata_valid=("snapshot.json", "targets.json")),
    Threat("rollback-root", errors.RollbackError, _rollback_root, _rollback_root_setup),
    Threat("rollback-release-counter", errors.RollbackError, lambda w: w.install("digits", "1.0.0"), _release_setup),
    Threat("mix-and-match-targets", errors.MixAndMatchError, _mix("targets"), _mix_setup("targets"), metadata_valid=("targets.json",)),
    Threat("mix-and-match-snapshot", errors.MixAndMatchError, _mix("snapshot"), _mix_setup("snapshot"), metadata_valid=("snapshot.json", "targets.json")),
    Threat("endless-data-target", errors.LengthError, lambda w: w.install(), _endless_target),
    Threat("endless-data-metadata", errors.LengthError, lambda w: w.install(), _endless_metadata),
    Threat("decompression-bomb-gzip", BundleError, _install_bad, _gzip_bomb, metadata_valid=True),
    Threat("decompression-bomb-oversized-member", BundleError, _install_bad, _oversized_member, metadata_valid=True),
    Threat("decompression-bomb-declared-size", BundleError, _install_bad, _declared_bomb, metadata_valid=True),
    Threat("path-traversal-dotdot", BundleError, _install_bad, _traversal("../../evil"), metadata_valid=True),
    Threat("path-traversal-absolute", BundleError, _install_bad, _traversal("/tmp/evil"), metadata_valid=True),
    Threat("symlink-member", BundleError, _install_bad, _link_member(b"2"), metadata_valid=True),
    Threat("hardlink-member", BundleError, _install_bad, _link_member(b"1"), metadata_valid=True),
    Threat("replayed-command", errors.ReplayError, lambda w: _verifier(w).verify(w.envelope), _accept_first),
    Threat("older-sequence-command", errors.ReplayError, lambda w: _verifier(w).verify(_signed(w, seq=4, command_id="c-0")), _accept_first),
    Threat("command-for-another-device", errors.WrongDeviceError, lambda w: _verifier(w).verify(_signed(w, device_id="dev-2"))),
    Threat("command-for-another-cohort", errors.WrongDeviceError, lambda w: _verifier(w).verify(_signed(w, device_id="cohort:fleet-b"))),
    Threat("expired-command", errors.CommandExpiredError, lambda w: _verifier(w).verify(_signed(w, expires=time.time() - 1))),
    Threat("command-wrong-key", errors.CommandSignatureError, lambda w: _verifier(w).verify(sign_command(_command(w), CryptoSigner.generate_ed25519()))),
    Threat("assignment-not-the-verified-target", errors.AssignmentMismatchError, _assignment_mismatch, metadata_valid=True),
]


@pytest.mark.parametrize("threat", THREATS, ids=[t.id for t in THREATS])
def test_threat_is_refused_and_nothing_persisted(threat: Threat, tmp_path):
    world = make_world(tmp_path)
    world.install()  # the device trusts and runs the good bundle
    if threat.setup:
        threat.setup(world)
    metadata_before = file_state(world.metadata_dir)
    store_before = file_state(world.store)
    floor_before = world.floor.floors()
    command_state = world.device / "command-state.json"
    command_before = command_state.read_bytes() if command_state.exists() else None

    with pytest.raises(threat.expected) as info:
        threat.action(world)

    assert type(info.value) is threat.expected, f"{threat.id}: got {type(info.value).__name__}: {info.value}"
    assert str(info.value)  # a message that says what failed
    if threat.metadata_valid is False:
        assert file_state(world.metadata_dir) == metadata_before, "metadata cache changed"
    elif isinstance(threat.metadata_valid, tuple):
        after = file_state(world.metadata_dir)
        assert {f: after.get(f) for f in threat.metadata_valid} == {f: metadata_before.get(f) for f in threat.metadata_valid}
    assert file_state(world.store) == store_before, "something was installed"
    assert file_state(world.downloads) == {}, "a download was left behind"
    assert world.floor.floors() == floor_before
    if threat.id != "assignment-not-the-verified-target":  # that one legitimately accepted seq 9 first
        assert (command_state.read_bytes() if command_state.exists() else None) == command_before


# The agent verifies metadata in a child process (edgeops.trust.worker) by default: the same
# threats through it. Expiry rows move the device's clock, which the worker does not take.
WORKER_THREATS = [t for t in THREATS if not t.id.startswith("expired-") or t.id == "expired-command"]


@pytest.mark.slow  # a worker process per refresh: ~25 s for the table
@pytest.mark.parametrize("threat", WORKER_THREATS, ids=[t.id for t in WORKER_THREATS])
def test_threat_is_refused_through_the_tuf_worker(threat: Threat, tmp_path):
    world = make_world(tmp_path)
    world.isolated = True
    world.install()
    if threat.setup:
        threat.setup(world)
    metadata_before = file_state(world.metadata_dir)
    store_before = file_state(world.store)
    floor_before = world.floor.floors()

    with pytest.raises(threat.expected) as info:
        threat.action(world)

    assert type(info.value) is threat.expected, f"{threat.id}: got {type(info.value).__name__}: {info.value}"
    assert str(info.value)
    if threat.metadata_valid is False:
        assert file_state(world.metadata_dir) == metadata_before, "metadata cache changed"
    assert file_state(world.store) == store_before, "something was installed"
    assert file_state(world.downloads) == {}, "a download was left behind"
    assert world.floor.floors() == floor_before


def test_threat_table_covers_the_issue():
    """Every threat the issue names has a row (guards against a row being dropped)."""
    ids = {t.id for t in THREATS}
    required = {
        "tampered-bundle-byte", "tampered-manifest", "file-not-in-manifest", "wrong-signing-key",
        "below-threshold-signatures", "expired-timestamp", "expired-snapshot", "expired-targets", "expired-root",
        "rollback-timestamp", "rollback-snapshot", "rollback-targets", "rollback-root", "rollback-release-counter",
        "mix-and-match-targets", "mix-and-match-snapshot", "endless-data-target", "decompression-bomb-gzip",
        "decompression-bomb-oversized-member", "path-traversal-dotdot", "symlink-member", "hardlink-member",
        "rotation-too-few-old-signatures", "replayed-command", "command-for-another-device", "expired-command",
    }
    assert required <= ids


def test_good_update_still_installs(tmp_path):
    """The control row: the same path installs an untampered new release and the floor rises on commit."""
    world = make_world(tmp_path)
    world.install()
    world.repo.publish(make_bundle(tmp_path / "v2.bundle", version="2.0.0", release=2), world.ring)
    out = world.install("digits", "2.0.0")
    assert (out / "model" / "model.onnx").exists()
    world.floor.raise_to("digits", 2)
    assert world.floor.get("digits") == 2
    assert world.client().get_target(target_path("digits", "2.0.0")).release == 2
