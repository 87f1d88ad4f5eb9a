"""The publisher side: a TUF repository of bundles in a folder (python-tuf ``tuf.api.metadata``).

Layout of ``REPO``::

    metadata/1.root.json … N.root.json   every root version (clients walk them on rotation)
    metadata/root.json                   copy of the newest root (the file devices are provisioned with)
    metadata/<N>.targets.json            consistent snapshots: targets and snapshot are versioned,
    metadata/<N>.snapshot.json           so a client always reads one coherent repository state
    metadata/timestamp.json              the only file rewritten in place (last, atomically)
    targets/<name>/<version>/<sha256>.<name>-<version>.bundle
    targets/<name>/<version>/<profile>/<sha256>.<name>-<version>.bundle   further profiles of a version

Target path convention: bundle ``N`` version ``V`` is the TUF target ``N/V/N-V.bundle``; the
same version built for further hardware profiles (one bundle per profile, published one by one)
coexists as ``N/V/<profile>/N-V.bundle``: the first profile published keeps the plain path, so
single-profile repositories never change. Every such target carries the same signed ``release``
(a further profile's manifest release must equal the first's), and the same name, version and
profile with other bytes is refused. Which profile a target serves is its signed
``custom.profile``; the console resolves a device's target by it, and devices check the path,
the custom fields and the bundle's manifest agree. Its ``custom`` field signs what devices
decide on::

    {"name": N, "version": V, "release": <counter devices enforce>, "manifest_release": <the
     bundle manifest's release>, "profile": ..., "manifest_sha256": ..., "downgrade": bool}

Release channels (``publish(..., channel="staging")``, ``edgeops publish --channel``): ``custom``
also gets ``channel`` (the last channel the version was published to) and ``channels``, a map
channel -> the earlier channel a rollout must have finished in before this one (``null`` for
none): by default the channel the version was published to before, else ``requires_channel``.
Publishing the same bundle again to another channel re-signs its target with the channel added
(the bundle file and its release are unchanged): dev -> staging -> prod is three publishes. The
console refuses a rollout of the version into a channel it was not published to, or before it
finished a rollout in the required earlier channel (:mod:`edgeops.fleet.rollouts.service`).

Release counters: publishing a bundle whose manifest release is not above the highest signed
``release`` for the same name is refused (DowngradeRefusedError). ``allow_downgrade`` publishes
it anyway under ``release = highest + 1``: the bundle bytes (and its manifest) are unchanged,
but the *signed* counter moves forward, so devices' floors keep rising — the RAUC way of rolling
a fleet back to an old image. Devices enforce the signed counter, never the manifest's.

Every write is atomic (temp file, fsync, os.replace) and ordered so that a reader never sees a
timestamp that points at files not yet written: target file, targets, snapshot, timestamp.
A lock file serialises concurrent publishers (console and CLI).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.metadata import MetaFile, Metadata, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from edgeops.trust import errors
from edgeops.trust.targets import COMMAND_KEYS_FIELD, profile_target_path, target_file_path, target_path
from edgeops.trust.fsutil import atomic_write, fsync_dir
from edgeops.trust.keys import TUF_ROLES, Keyring, generate_key
from edgeops.trust.verify import verify_bundle_file

SPEC_VERSION = "1.0.31"
CHANNEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")  # as the console's rollout settings accept
# Re-sign a role once less than this fraction of its validity period is left.
REFRESH_FRACTION = 0.5
_SERIALIZER = JSONSerializer(compact=False)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class PublishResult:
    """What ``publish`` did."""

    target: str
    length: int
    sha256: str
    custom: dict[str, Any]
    versions: dict[str, int]
    unchanged: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"target": self.target, "length": self.length, "sha256": self.sha256, "custom": self.custom, "versions": self.versions, "unchanged": self.unchanged}


@dataclass
class Repository:
    """A TUF repository folder; see the module docstring for its layout."""

    repo_dir: Path
    clock: Callable[[], datetime] = field(default=_utcnow)

    def __post_init__(self) -> None:
        self.repo_dir = Path(self.repo_dir)

    @property
    def metadata_dir(self) -> Path:
        """``REPO/metadata``."""
        return self.repo_dir / "metadata"

    @property
    def targets_dir(self) -> Path:
        """``REPO/targets``."""
        return self.repo_dir / "targets"

    # ----------------------------------------------------------------- reading
    def exists(self) -> bool:
        """True when the folder holds an initialised repository."""
        return (self.metadata_dir / "timestamp.json").exists()

    def _read(self, name: str) -> Metadata:
        path = self.metadata_dir / name
        try:
            return Metadata.from_bytes(path.read_bytes())
        except FileNotFoundError as e:
            raise errors.RepositoryError(f"{path}: missing; is {self.repo_dir} a repository? (`edgeops repo init`)") from e
        except Exception as e:  # noqa: BLE001 - tuf raises DeserializationError and others
            raise errors.RepositoryError(f"{path}: unreadable metadata: {e}") from e

    def root(self) -> Metadata[Root]:
        """The newest root."""
        return self._read("root.json")

    def timestamp(self) -> Metadata[Timestamp]:
        """The current timestamp."""
        return self._read("timestamp.json")

    def snapshot(self) -> Metadata[Snapshot]:
        """The snapshot the timestamp points at."""
        return self._read(f"{self.timestamp().signed.snapshot_meta.version}.snapshot.json")

    def targets(self) -> Metadata[Targets]:
        """The targets the current snapshot points at."""
        return self._read(f"{self.snapshot().signed.meta['targets.json'].version}.targets.json")

    # ----------------------------------------------------------------- writing
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        with open(self.repo_dir / ".lock", "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _expires(self, ring: Keyring, role: str) -> datetime:
        return (self.clock() + timedelta(days=ring.expiry_days(role))).replace(microsecond=0)

    def _sign(self, md: Metadata, signers: list[Signer]) -> bytes:
        md.signatures.clear()
        for signer in signers:
            md.sign(signer, append=True)
        return md.to_bytes(_SERIALIZER)

    def _write(self, name: str, data: bytes) -> None:
        atomic_write(self.metadata_dir / name, data)

    def _write_root(self, root: Metadata[Root], signers: list[Signer]) -> None:
        data = self._sign(root, signers)
        self._write(f"{root.signed.version}.root.json", data)
        self._write("root.json", data)

    def _write_targets(self, targets: Metadata[Targets], ring: Keyring) -> bytes:
        data = self._sign(targets, ring.signers("targets"))
        self._write(f"{targets.signed.version}.targets.json", data)
        return data

    def _write_snapshot_and_timestamp(self, ring: Keyring, targets_version: int, targets_bytes: bytes | None) -> dict[str, int]:
        snap_md = self.snapshot() if self.exists() else Metadata(Snapshot())
        snap = snap_md.signed
        if targets_bytes is not None:
            snap.meta["targets.json"] = MetaFile(targets_version, len(targets_bytes), {"sha256": hashlib.sha256(targets_bytes).hexdigest()})
        snap.version = snap.version + 1 if self.exists() else 1
        snap.expires = self._expires(ring, "snapshot")
        snap_bytes = self._sign(snap_md, ring.signers("snapshot"))
        self._write(f"{snap.version}.snapshot.json", snap_bytes)
        ts_md = self.timestamp() if self.exists() else Metadata(Timestamp())
        ts = ts_md.signed
        ts.snapshot_meta = MetaFile(snap.version, len(snap_bytes), {"sha256": hashlib.sha256(snap_bytes).hexdigest()})
        ts.version = ts.version + 1 if self.exists() else 1
        ts.expires = self._expires(ring, "timestamp")
        # The timestamp is the pointer clients follow: written last, so everything it names exists.
        self._write("timestamp.json", self._sign(ts_md, ring.signers("timestamp")))
        return {"snapshot": snap.version, "timestamp": ts.version}

    @classmethod
    def init(cls, repo_dir: str | Path, ring: Keyring, clock: Callable[[], datetime] = _utcnow) -> "Repository":
        """Create root, targets, snapshot and timestamp (version 1) from a keyring."""
        repo = cls(Path(repo_dir), clock)
        with repo._locked():
            if repo.exists() or (repo.metadata_dir / "1.root.json").exists():
                raise errors.RepositoryError(f"{repo.repo_dir}: already a repository")
            root = Root(consistent_snapshot=True, expires=repo._expires(ring, "root"))
            for role in TUF_ROLES:
                for key in ring.public_keys(role):
                    root.add_key(key, role)
                root.roles[role].threshold = ring.role(role).threshold
            _set_command_keys(root, ring)
            root_md = Metadata(root)
            repo._write_root(root_md, ring.signers("root"))
            targets_md = Metadata(Targets(expires=repo._expires(ring, "targets")))
            targets_bytes = repo._write_targets(targets_md, ring)
            repo._write_snapshot_and_timestamp(ring, 1, targets_bytes)
            repo.targets_dir.mkdir(exist_ok=True)
        return repo

    def publish(self, bundle: str | Path, ring: Keyring, allow_downgrade: bool = False, channel: str | None = None, requires_channel: str | None = None) -> PublishResult:
        """Add a bundle as a target and re-sign targets, snapshot and timestamp.

        The bundle is verified first (its manifest hashes, one pass). Publishing the same
        bundle again changes nothing, unless to a channel it is not in yet (see the module doc:
        its target is re-signed with the channel added); the same name and version with other
        bytes is refused.
        """
        _check_channels(channel, requires_channel)
        verdict = verify_bundle_file(bundle)
        m = verdict.manifest
        with self._locked():
            if not self.exists():
                raise errors.RepositoryError(f"{self.repo_dir}: not a repository yet; run `edgeops repo init --repo {self.repo_dir} --keys DIR`")
            targets_md = self.targets()
            targets = targets_md.signed
            path = _placement(targets.targets, m.name, m.version, m.profile)
            existing = targets.targets.get(path)
            if existing is not None:
                if existing.hashes.get("sha256") == verdict.sha256 and not allow_downgrade:
                    custom = dict(existing.unrecognized_fields.get("custom", {}))
                    updated = _with_channel(custom, channel, requires_channel)
                    if updated == custom:
                        return PublishResult(path, existing.length, verdict.sha256, custom, self._versions(), unchanged=True)
                    # the same bytes into another channel: re-sign the target's custom only
                    targets.targets[path] = TargetFile(existing.length, dict(existing.hashes), path, unrecognized_fields={**existing.unrecognized_fields, "custom": updated})
                    targets.version += 1
                    targets.expires = self._expires(ring, "targets")
                    targets_bytes = self._write_targets(targets_md, ring)
                    versions = self._write_snapshot_and_timestamp(ring, targets.version, targets_bytes)
                    return PublishResult(path, existing.length, verdict.sha256, updated, {"targets": targets.version, **versions})
                if existing.hashes.get("sha256") != verdict.sha256:
                    raise errors.RepositoryError(
                        f"{m.name}@{m.version} for profile {m.profile} is already published ({path}) with other content; "
                        "bump the bundle version instead of replacing it"
                    )
            same_name = [t for t in targets.targets.values() if t.unrecognized_fields.get("custom", {}).get("name") == m.name]
            highest = max((int(t.unrecognized_fields["custom"].get("release", 0)) for t in same_name), default=None)
            downgrade = False
            release = m.release
            siblings = [t for t in same_name if t.path != path and t.unrecognized_fields["custom"].get("version") == m.version]
            if existing is None and siblings:
                # another profile's bundle of this version: one version, one signed release counter
                release, downgrade = _sibling_release(Path(bundle), m.name, m.version, m.release, siblings)
            elif highest is not None and m.release <= highest:
                if not allow_downgrade:
                    owner = next(t.path for t in same_name if t.unrecognized_fields["custom"].get("release") == highest)
                    raise errors.DowngradeRefusedError(
                        f"{bundle}: {m.name} release {m.release} is not above the published release {highest} ({owner}); "
                        f"build with a higher release counter, or pass --allow-downgrade to re-issue it as release {highest + 1}"
                    )
                release, downgrade = highest + 1, True
            custom = {
                "name": m.name,
                "version": m.version,
                "release": release,
                "manifest_release": m.release,
                "profile": m.profile,
                "manifest_sha256": verdict.manifest_sha256,
                "downgrade": downgrade,
            }
            custom = _with_channel(custom, channel, requires_channel)
            # 1. the target file (content-addressed, so never overwritten with other bytes)
            dest = self.repo_dir / target_file_path(path, verdict.sha256)
            if not dest.exists():
                _copy_atomic(Path(bundle), dest)
            # 2. targets, 3. snapshot, 4. timestamp
            targets.targets[path] = TargetFile(verdict.length, {"sha256": verdict.sha256}, path, unrecognized_fields={"custom": custom})
            targets.version += 1
            targets.expires = self._expires(ring, "targets")
            targets_bytes = self._write_targets(targets_md, ring)
            versions = self._write_snapshot_and_timestamp(ring, targets.version, targets_bytes)
        return PublishResult(path, verdict.length, verdict.sha256, custom, {"targets": targets.version, **versions})

    def _versions(self) -> dict[str, int]:
        return {"root": self.root().signed.version, "targets": self.targets().signed.version, "snapshot": self.snapshot().signed.version, "timestamp": self.timestamp().signed.version}

    # ----------------------------------------------------------------- expiry
    def expiries(self) -> dict[str, datetime]:
        """Expiry time of each top-level role."""
        return {"root": self.root().signed.expires, "targets": self.targets().signed.expires, "snapshot": self.snapshot().signed.expires, "timestamp": self.timestamp().signed.expires}

    def due_roles(self, ring: Keyring | None = None) -> list[str]:
        """Roles with less than half of their validity period left (or expired)."""
        now = self.clock()
        due = []
        for role, expires in self.expiries().items():
            period = timedelta(days=ring.expiry_days(role)) if ring else _default_period(role)
            if expires - now < period * REFRESH_FRACTION:
                due.append(role)
        return due

    def needs_refresh(self, ring: Keyring | None = None) -> bool:
        """True when some role should be re-signed now (the console polls this)."""
        return bool(self.due_roles(ring))

    def refresh(self, ring: Keyring, force: bool = False) -> list[str]:
        """Re-sign the roles that are due (all of timestamp/snapshot/targets with ``force``).

        Re-signing a role re-signs the ones below it (targets -> snapshot -> timestamp). Root is
        re-signed only when due and a threshold of root keys is present.
        """
        with self._locked():
            due = set(TUF_ROLES) - {"root"} if force else set(self.due_roles(ring))
            done: list[str] = []
            if "root" in due:
                root_md = self.root()
                root_md.signed.version += 1
                root_md.signed.expires = self._expires(ring, "root")
                self._write_root(root_md, ring.signers("root"))
                done.append("root")
            targets_bytes = None
            targets_version = self.targets().signed.version
            if "targets" in due:
                targets_md = self.targets()
                targets_md.signed.version += 1
                targets_md.signed.expires = self._expires(ring, "targets")
                targets_bytes = self._write_targets(targets_md, ring)
                targets_version = targets_md.signed.version
                done.append("targets")
            if due & {"targets", "snapshot", "timestamp"}:
                if "targets" in done or "snapshot" in due:
                    self._write_snapshot_and_timestamp(ring, targets_version, targets_bytes)
                    done += ["snapshot", "timestamp"]
                else:
                    ts_md = self.timestamp()
                    ts_md.signed.version += 1
                    ts_md.signed.expires = self._expires(ring, "timestamp")
                    self._write("timestamp.json", self._sign(ts_md, ring.signers("timestamp")))
                    done.append("timestamp")
        return done

    # ----------------------------------------------------------------- rotation
    def rotate(self, role: str, ring: Keyring) -> list[str]:
        """Replace the keys of ``role`` with new ones; returns the new key names.

        A new root version lists the new keys. For ``root`` it is signed by a threshold of the
        old root keys *and* all new ones (clients verify both), for other roles by the root
        keys; the rotated role and those below it are then re-signed with the new keys.
        ``command`` rotates the console's command key, which is also signed into root.json.
        Old key files move to ``KEYS/retired/``.
        """
        if role not in TUF_ROLES + ("command",):
            raise errors.RepositoryError(f"unknown role {role!r}; one of {', '.join(TUF_ROLES + ('command',))}")
        with self._locked():
            entry = ring.role(role)
            old_names = list(entry.keys)
            old_root_signers = ring.signers("root")
            new_names = []
            for _ in old_names:
                name = ring.next_key_name(role)
                generate_key(ring.directory, name, ring.passphrase, ring.private_dir(role))
                new_names.append(name)
            root_md = self.root()
            root = root_md.signed
            if role in TUF_ROLES:
                for key in ring.public_keys(role):
                    root.revoke_key(key.keyid, role)
            entry.keys = new_names
            if role in TUF_ROLES:
                for key in ring.public_keys(role):
                    root.add_key(key, role)
            _set_command_keys(root, ring)
            root.version += 1
            root.expires = self._expires(ring, "root")
            signers = list(old_root_signers)
            if role == "root":
                signers += ring.signers("root")
            self._write_root(root_md, signers)
            ring.save()
            for name in old_names:
                ring.retire(name)
        if role in ("targets", "snapshot", "timestamp"):
            self.refresh(ring, force=True)
        return new_names

    # ----------------------------------------------------------------- status
    def status(self, ring: Keyring | None = None) -> dict[str, Any]:
        """Versions, expiry and targets, for ``edgeops repo status``."""
        now = self.clock()
        due = set(self.due_roles(ring))
        roles = {}
        md = {"root": self.root(), "targets": self.targets(), "snapshot": self.snapshot(), "timestamp": self.timestamp()}
        for role, m in md.items():
            roles[role] = {
                "version": m.signed.version,
                "expires": m.signed.expires.isoformat(),
                "expires_in_s": int((m.signed.expires - now).total_seconds()),
                "expired": m.signed.expires <= now,
                "needs_refresh": role in due,
            }
        targets = [
            {"target": t.path, "length": t.length, "sha256": t.hashes.get("sha256"), **{k: v for k, v in t.unrecognized_fields.get("custom", {}).items() if k in ("name", "version", "release", "profile", "downgrade")}}
            for t in sorted(md["targets"].signed.targets.values(), key=lambda t: t.path)
        ]
        return {"repo": str(self.repo_dir), "roles": roles, "targets": targets, "needs_refresh": bool(due)}


def _placement(targets: dict[str, TargetFile], name: str, version: str, profile: str) -> str:
    """Where ``name@version`` built for ``profile`` goes: the plain target path, unless another
    profile's bundle of the version holds it; then the profile's own path (see the module doc)."""
    plain = target_path(name, version)
    held = targets.get(plain)
    if held is None or held.unrecognized_fields.get("custom", {}).get("profile") == profile:
        return plain
    try:
        return profile_target_path(name, version, profile)
    except ValueError as e:
        raise errors.RepositoryError(f"{name}@{version}: {e}; a further profile of a published version needs a profile name that can be a path segment") from e


def _sibling_release(bundle: Path, name: str, version: str, manifest_release: int, siblings: list[TargetFile]) -> tuple[int, bool]:
    """The signed (release, downgrade) of a further profile's bundle of a published version: the
    same as its siblings' (devices enforce one counter per bundle name), so its manifest must
    carry the siblings' manifest release; RepositoryError naming them otherwise."""
    custom = siblings[0].unrecognized_fields["custom"]
    if int(custom.get("manifest_release", -1)) != manifest_release:
        others = ", ".join(sorted(f"{t.unrecognized_fields['custom'].get('profile')} (release {t.unrecognized_fields['custom'].get('manifest_release')})" for t in siblings))
        raise errors.RepositoryError(
            f"{bundle}: {name}@{version} has release {manifest_release}, but this version is published for profile(s) {others}; "
            "build every profile's bundle of one version with the same release"
        )
    return int(custom.get("release", manifest_release)), bool(custom.get("downgrade", False))


def _default_period(role: str) -> timedelta:
    from edgeops.trust.keys import DEFAULT_EXPIRY_DAYS

    return timedelta(days=DEFAULT_EXPIRY_DAYS[role])


def _set_command_keys(root: Root, ring: Keyring) -> None:
    """Sign the console's command keys into root.json so devices can learn them through TUF."""
    if "command" in ring.roles:
        root.unrecognized_fields[COMMAND_KEYS_FIELD] = {k.keyid: k.to_dict() for k in ring.public_keys("command")}


def _copy_atomic(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 4 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)


def _check_channels(channel: str | None, requires_channel: str | None) -> None:
    """Refuse a malformed channel name, a requirement without a channel, or a channel requiring itself."""
    for what, name in (("channel", channel), ("requires_channel", requires_channel)):
        if name is not None and not CHANNEL_RE.match(name):
            raise errors.RepositoryError(f"{what} {name!r}: a channel name is 1-32 letters, digits, '_', '.', '-' (e.g. dev, staging, prod)")
    if requires_channel is not None and channel is None:
        raise errors.RepositoryError(f"requires_channel {requires_channel!r} without a channel: give the channel it is published to (--channel)")
    if requires_channel is not None and requires_channel == channel:
        raise errors.RepositoryError(f"channel {channel!r} cannot require itself; name the earlier channel (e.g. --channel prod --requires-channel staging)")


def _with_channel(custom: dict[str, Any], channel: str | None, requires_channel: str | None) -> dict[str, Any]:
    """``custom`` with ``channel`` added (a copy; unchanged without one): the channel map gets
    channel -> ``requires_channel``, or the channel published before, or None."""
    if channel is None:
        return custom
    channels = dict(custom.get("channels") or {})
    before = custom.get("channel")
    if channel in channels and requires_channel is None:
        required = channels[channel]
    else:
        required = requires_channel if requires_channel is not None else (before if before and before != channel else None)
    channels[channel] = required
    return {**custom, "channel": channel, "channels": channels}
