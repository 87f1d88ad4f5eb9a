"""Mutation test: random single-byte changes and truncations of a signed bundle and of every
metadata file are each rejected with a typed error (fixed seed, all in memory).

A mutation "passes" only when the verifier raises a TrustError or BundleError subclass; any other
exception, or a mutated file that verifies, fails the test.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeops.errors import BundleError, TrustError
from edgeops.trust import errors
from edgeops.trust.client import TrustClient
from edgeops.trust.verify import BundleScanner, verify_bundle_bytes
from tests.edgeops.trust.helpers import make_world, published_file, resign

SEED = 20261123
BUNDLE_MUTATIONS = 1200
METADATA_MUTATIONS_PER_FILE = 260  # x 4 files


def mutations(data: bytes, count: int, rng: random.Random) -> Iterator[tuple[str, bytes]]:
    """Half single-byte replacements (always a different value), half truncations."""
    for i in range(count):
        if i % 2 == 0:
            pos = rng.randrange(len(data))
            value = (data[pos] + rng.randrange(1, 256)) % 256
            yield f"byte {pos} -> {value}", data[:pos] + bytes([value]) + data[pos + 1 :]
        else:
            cut = rng.randrange(len(data))
            yield f"truncate to {cut}", data[:cut]


class MemoryTransport:
    """Serves repository files from a dict (the attacker controls the bytes)."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files

    def fetch(self, path: str, max_length: int):
        if path not in self.files:
            raise errors.NotFoundError(path)
        return iter([self.files[path][: max_length + 1]])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("mutation"))
    resign(w.repo, w.ring, "root")  # a root v2, so root rotation is mutated too
    return w


def test_bundle_mutations_are_all_rejected(world):
    client = world.client()
    record = client.get_bundle("digits", "1.0.0")
    data = published_file(world).read_bytes()
    verify_bundle_bytes(data, record)  # the original verifies
    rng = random.Random(SEED)
    internal_catches = 0
    for what, mutated in mutations(data, BUNDLE_MUTATIONS, rng):
        with pytest.raises((TrustError, BundleError)):
            verify_bundle_bytes(mutated, record)
        # Without the signed hash, the bundle's own checks still see most changes; whatever
        # they say, it must be a typed error.
        try:
            scanner = BundleScanner(label=what)
            scanner.feed(mutated)
            scanner.finish()
        except BundleError:
            internal_catches += 1
    # Without the signed hash, changes inside manifest.json that still parse (a digit of a
    # budget, a letter of a name, JSON whitespace) go unseen: the manifest is the root of the
    # bundle's own hashes. Everything else is caught.
    assert internal_catches > BUNDLE_MUTATIONS * 0.8


def _repo_files(world) -> dict[str, bytes]:
    files = {}
    for p in world.repo.repo_dir.rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            files[str(p.relative_to(world.repo.repo_dir))] = p.read_bytes()
    return files


@pytest.mark.parametrize("role", ["root", "timestamp", "snapshot", "targets"])
def test_metadata_mutations_are_all_rejected(world, role):
    files = _repo_files(world)
    name = {
        "root": f"metadata/{world.repo.root().signed.version}.root.json",
        "timestamp": "metadata/timestamp.json",
        "snapshot": f"metadata/{world.repo.timestamp().signed.snapshot_meta.version}.snapshot.json",
        "targets": f"metadata/{world.repo.snapshot().signed.meta['targets.json'].version}.targets.json",
    }[role]
    anchor = files["metadata/1.root.json"]
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # fsyncs are free on tmpfs
    base = Path(tempfile.mkdtemp(prefix="edgeops-mut-", dir=shm))
    try:
        # The unmodified repository refreshes fine through the same path.
        TrustClient(base / "ok", MemoryTransport(files), root=anchor).refresh()
        rng = random.Random(f"{SEED}-{role}")
        for i, (what, mutated) in enumerate(mutations(files[name], METADATA_MUTATIONS_PER_FILE, rng)):
            client = TrustClient(base / str(i), MemoryTransport({**files, name: mutated}), root=anchor)
            try:
                client.refresh()
            except TrustError:
                pass
            else:
                pytest.fail(f"{name}: mutation '{what}' was accepted")
            shutil.rmtree(base / str(i))
    finally:
        shutil.rmtree(base, ignore_errors=True)
