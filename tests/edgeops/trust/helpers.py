"""Helpers for the trust tests: tiny bundles, raw tar members, and a repository attacker/insider.

The attacker helpers write repository files directly (as someone who controls the server, or
who holds some keys, would) instead of going through ``Repository.publish``, which refuses
malformed bundles.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tuf.api.metadata import MetaFile, Metadata, TargetFile

from edgeops.bundle import Manifest, ManifestBudgets, Provenance, TensorSpec, describe_files, sha256_bytes, write_bundle
from edgeops.trust.client import ReleaseFloor, TrustClient, target_file_path, target_path
from edgeops.trust.keys import Keyring
from edgeops.trust.repository import Repository
from edgeops.trust.transport import DirectoryTransport

NOW = datetime.now(timezone.utc)


def small_payload(seed: int = 0, size: int = 2048) -> dict[str, bytes]:
    """A bundle payload of arbitrary bytes (the trust layer does not care what the model is)."""
    rnd = hashlib.sha256(str(seed).encode()).digest()
    model = (rnd * (size // len(rnd) + 1))[:size]
    return {"model/model.onnx": model, "golden.json": b'{"cases": []}', "report.json": b'{"summary": {}}'}


def make_manifest(payload: dict[str, bytes], name: str = "digits", version: str = "1.0.0", release: int = 1, profile: str = "x86_64-avx512-vnni") -> Manifest:
    """A valid manifest describing ``payload``."""
    return Manifest(
        name=name,
        version=version,
        release=release,
        profile=profile,
        runtime="onnxruntime",
        providers=["CPUExecutionProvider"],
        artifact="model/model.onnx",
        quantization="none",
        inputs=[TensorSpec(name="input", dtype="float32", shape=["batch", 16])],
        outputs=[TensorSpec(name="probs", dtype="float32", shape=["batch", 4])],
        budgets=ManifestBudgets(latency_p95_ms=20.0),
        files=describe_files(payload),
        provenance=Provenance(source_model_sha256=sha256_bytes(payload["model/model.onnx"]), source_format="onnx"),
    )


def make_bundle(path: Path, name: str = "digits", version: str = "1.0.0", release: int = 1, seed: int = 0, size: int = 2048) -> Path:
    """Write a small valid bundle with edgeops.bundle.write_bundle."""
    payload = small_payload(seed, size)
    write_bundle(path, make_manifest(payload, name, version, release), payload)
    return Path(path)


def raw_tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar file of arbitrary members (for bundles write_bundle would never produce)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    """A regular-file member."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    """A symlink or hardlink member."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def malicious_bundle(extra: list[tuple[tarfile.TarInfo, bytes | None]], payload: dict[str, bytes] | None = None, manifest: Manifest | None = None, name: str = "digits", version: str = "1.0.0", release: int = 1) -> bytes:
    """A bundle whose manifest and members are valid, followed (or replaced) by ``extra`` members."""
    payload = payload if payload is not None else small_payload()
    manifest = manifest or make_manifest(payload, name, version, release)
    mbytes = manifest.to_json_bytes()
    members = [reg("manifest.json", mbytes)] + [reg(n, d) for n, d in sorted(payload.items())] + extra
    return raw_tar(members)


def file_state(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (symlinks by their target): what 'unchanged' means."""
    out = {}
    if not directory.exists():
        return out
    for p in sorted(directory.rglob("*")):
        rel = str(p.relative_to(directory))
        if p.is_symlink():
            out[rel] = "->" + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class World:
    """A publisher (keys + repository) and one device (metadata cache, floor, download and store)."""

    tmp: Path
    ring: Keyring
    repo: Repository
    bundle: Path
    clock_offset: timedelta = field(default_factory=timedelta)
    # True: the device verifies metadata in the TUF worker process, as the agent does by default.
    isolated: bool = False

    @property
    def device(self) -> Path:
        return self.tmp / "device"

    @property
    def metadata_dir(self) -> Path:
        return self.device / "metadata"

    @property
    def store(self) -> Path:
        return self.device / "store"

    @property
    def downloads(self) -> Path:
        return self.device / "downloads"

    @property
    def floor(self) -> ReleaseFloor:
        return ReleaseFloor(self.device / "release-floor.json")

    def client(self) -> TrustClient:
        """A fresh client (as after an agent restart) with the world's clock."""
        if self.isolated:
            from edgeops.trust.worker import IsolatedTrustClient

            assert not self.clock_offset, "the TUF worker runs on the real clock"
            return IsolatedTrustClient(self.metadata_dir, DirectoryTransport(self.repo.repo_dir), root=self.repo.metadata_dir / "1.root.json")  # type: ignore[return-value]
        root = (self.repo.metadata_dir / "1.root.json").read_bytes()
        return TrustClient(self.metadata_dir, DirectoryTransport(self.repo.repo_dir), root=root, clock=lambda: datetime.now(timezone.utc) + self.clock_offset)

    def install(self, name: str = "digits", version: str = "1.0.0") -> Path:
        """The device's install path: refresh, look up, floor check, download, extract.

        The download is staged and removed whatever happens; the store gets the extracted
        bundle only when everything verified.
        """
        from edgeops.bundle import extract_bundle

        client = self.client()
        client.refresh()
        record = client.get_bundle(name, version)
        self.floor.check(record.bundle_name, record.release)
        staged = self.downloads / f"{record.sha256}.bundle"
        try:
            client.download_target(record, staged)
            extract_bundle(staged, self.store / record.sha256, max_total_bytes=1 << 20)
        finally:
            staged.unlink(missing_ok=True)
        return self.store / record.sha256

    def device_state(self) -> dict[str, dict[str, str]]:
        """Everything the device persisted: metadata cache, floor, command state, store, downloads."""
        return {"device": file_state(self.device)}


def make_world(tmp: Path, expiry: dict[str, float] | None = None, root_keys: int = 3, root_threshold: int = 2) -> World:
    """Keys, an initialised repository with one published bundle, and an empty device."""
    ring = Keyring.create(tmp / "keys", root_keys=root_keys, root_threshold=root_threshold, expiry_days=expiry)
    repo = Repository.init(tmp / "repo", ring)
    bundle = make_bundle(tmp / "digits-1.0.0.bundle")
    repo.publish(bundle, ring)
    return World(tmp, ring, repo, bundle)


# --------------------------------------------------------------------- repository insider helpers
def resign(repo: Repository, ring: Keyring, role: str, *, expires: datetime | None = None, version: int | None = None, signers=None, mutate=None) -> bytes:
    """Re-sign one role (as a key holder would) and update the roles above it in the chain.

    targets -> snapshot -> timestamp; root is written as N.root.json / root.json. Returns the
    bytes written for ``role``.
    """
    if role == "root":
        md = repo.root()
        md.signed.version = version or md.signed.version + 1
        if expires:
            md.signed.expires = expires
        if mutate:
            mutate(md.signed)
        data = _sign(md, signers if signers is not None else ring.signers("root"))
        repo._write(f"{md.signed.version}.root.json", data)
        repo._write("root.json", data)
        return data
    if role == "targets":
        md = repo.targets()
        md.signed.version = version or md.signed.version + 1
        if expires:
            md.signed.expires = expires
        if mutate:
            mutate(md.signed)
        data = _sign(md, signers if signers is not None else ring.signers("targets"))
        repo._write(f"{md.signed.version}.targets.json", data)
        resign(repo, ring, "snapshot", mutate=lambda s: s.meta.__setitem__("targets.json", MetaFile(md.signed.version, len(data), {"sha256": hashlib.sha256(data).hexdigest()})))
        return data
    if role == "snapshot":
        md = repo.snapshot()
        md.signed.version = version or md.signed.version + 1
        if expires:
            md.signed.expires = expires
        if mutate:
            mutate(md.signed)
        data = _sign(md, signers if signers is not None else ring.signers("snapshot"))
        repo._write(f"{md.signed.version}.snapshot.json", data)
        snap_version = md.signed.version
        resign(repo, ring, "timestamp", mutate=lambda t: setattr(t, "snapshot_meta", MetaFile(snap_version, len(data), {"sha256": hashlib.sha256(data).hexdigest()})))
        return data
    if role == "timestamp":
        md = repo.timestamp()
        md.signed.version = version or md.signed.version + 1
        if expires:
            md.signed.expires = expires
        if mutate:
            mutate(md.signed)
        data = _sign(md, signers if signers is not None else ring.signers("timestamp"))
        repo._write("timestamp.json", data)
        return data
    raise ValueError(role)


def _sign(md: Metadata, signers) -> bytes:
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    return repo_bytes(md)


def repo_bytes(md: Metadata) -> bytes:
    from tuf.api.serialization.json import JSONSerializer

    return md.to_bytes(JSONSerializer(compact=False))


def sign_raw_target(repo: Repository, ring: Keyring, data: bytes, name: str = "digits", version: str = "1.0.0", release: int = 1) -> str:
    """Publish arbitrary bytes as a correctly signed target (a compromised build or publisher)."""
    path = target_path(name, version)
    sha = hashlib.sha256(data).hexdigest()
    dest = repo.repo_dir / target_file_path(path, sha)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    custom = {"name": name, "version": version, "release": release, "manifest_release": release, "profile": "x86_64-avx512-vnni", "manifest_sha256": "0" * 64, "downgrade": False}
    resign(repo, ring, "targets", mutate=lambda t: t.targets.__setitem__(path, TargetFile(len(data), {"sha256": sha}, path, unrecognized_fields={"custom": custom})))
    return path


def published_file(world: World, name: str = "digits", version: str = "1.0.0") -> Path:
    """The repository file of a published bundle."""
    t = world.repo.targets().signed.targets[target_path(name, version)]
    return world.repo.repo_dir / target_file_path(t.path, t.hashes["sha256"])


def copy_tree(src: Path, dest: Path) -> None:
    """Copy a folder (for saving an old repository state)."""
    shutil.copytree(src, dest)


def load_json(path: Path) -> dict:
    """Read a JSON file."""
    return json.loads(path.read_bytes())
