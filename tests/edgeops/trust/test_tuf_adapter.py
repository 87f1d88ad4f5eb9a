"""Contract of edgeops/trust/tuf_adapter.py with the installed python-tuf.

The adapter relies on python-tuf parts outside its documented API (a private method, a private
attribute, exception message texts). Each is asserted here against a real python-tuf run on a
real repository, so a python-tuf release that changes one fails this test, not a device. The
version range these hold for is pinned in pyproject.toml.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from tuf.api import exceptions as tuf_exc
from tuf.api.metadata import Metadata, MetaFile, Root, Targets

from edgeops.trust import tuf_adapter

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (pyproject installs tomli there)
    import tomli as tomllib
from edgeops.trust.client import TrustClient
from edgeops.trust.targets import METADATA_PREFIX, TARGETS_PREFIX
from edgeops.trust.transport import DirectoryTransport

from .helpers import make_bundle, make_world, resign

REPO = Path(__file__).resolve().parents[3]


def test_installed_tuf_is_in_the_pinned_range():
    """The range below is the one these contract tests were run on; pyproject must pin it."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    [req] = [Requirement(d) for d in deps if Requirement(d).name == "tuf"]
    assert req.specifier, "tuf must be pinned to a version range (tests/edgeops/trust/test_tuf_adapter.py)"
    assert req.specifier.contains(version("tuf")), f"installed tuf {version('tuf')} is outside pyproject's {req.specifier}"
    assert not req.specifier.contains("8.0"), "a new python-tuf major must be checked by this test before the range admits it"


class RecordingUpdater(tuf_adapter.DurableUpdater):
    """Records what ngclient persists through the overridden private hook."""

    persisted: list[str]

    def _persist_file(self, filename: str, data: bytes) -> None:
        self.persisted.append(Path(filename).name)
        super()._persist_file(filename, data)


def _updater(world, cls=tuf_adapter.DurableUpdater):
    root = (world.repo.metadata_dir / "1.root.json").read_bytes()
    world.metadata_dir.mkdir(parents=True, exist_ok=True)
    return cls(str(world.metadata_dir), METADATA_PREFIX, None, TARGETS_PREFIX, fetcher=_fetcher(world), bootstrap=root)


def _fetcher(world):
    from edgeops.trust.client import _TransportFetcher

    return _TransportFetcher(DirectoryTransport(world.repo.repo_dir))


def test_ngclient_persists_every_top_level_role_through_persist_file(tmp_path):
    """DurableUpdater's fsync holds only while ngclient writes its cache through ``_persist_file``."""
    world = make_world(tmp_path)
    RecordingUpdater.persisted = []
    updater = _updater(world, RecordingUpdater)
    updater.refresh()
    persisted = set(RecordingUpdater.persisted)
    assert {"timestamp.json", "snapshot.json", "targets.json"} <= persisted and any("root" in n for n in persisted), persisted
    for name in ("timestamp.json", "snapshot.json", "targets.json"):
        assert (world.metadata_dir / name).is_file()


def test_trusted_set_gives_root_targets_and_versions(tmp_path):
    world = make_world(tmp_path)
    updater = _updater(world)
    assert isinstance(tuf_adapter.trusted_root(updater), Root)  # before a refresh: the bootstrap root
    assert tuf_adapter.trusted_versions(updater) == {"root": 1}
    updater.refresh()
    targets = tuf_adapter.trusted_targets(updater)
    assert isinstance(targets, Targets) and any(p.endswith(".bundle") for p in targets.targets)
    versions = tuf_adapter.trusted_versions(updater)
    assert set(versions) == {"root", "timestamp", "snapshot", "targets"}
    assert versions["targets"] == world.repo.targets().signed.version


def test_reference_time_decides_expiry(tmp_path):
    world = make_world(tmp_path)
    updater = _updater(world)
    later = datetime.now(timezone.utc) + timedelta(days=3650)
    tuf_adapter.set_reference_time(updater, later)
    with pytest.raises(tuf_exc.ExpiredMetadataError):
        updater.refresh()
    _updater(world).refresh()  # the same repository at today's time is fine


def _raw_failure(world) -> BaseException:
    """What python-tuf itself raises on the next refresh of the world's device."""
    with pytest.raises(tuf_exc.RepositoryError) as info:
        _updater(world).refresh()
    return info.value


def _seen_once(world) -> None:
    TrustClient(world.metadata_dir, DirectoryTransport(world.repo.repo_dir), root=world.repo.metadata_dir / "1.root.json").refresh()


def test_rollback_message_is_not_a_version_mismatch(tmp_path):
    world = make_world(tmp_path)
    old_ts = (world.repo.metadata_dir / "timestamp.json").read_bytes()
    world.repo.publish(make_bundle(tmp_path / "v2.bundle", version="2.0.0", release=2), world.ring)
    _seen_once(world)
    (world.repo.metadata_dir / "timestamp.json").write_bytes(old_ts)
    e = _raw_failure(world)
    assert type(e) is tuf_exc.BadVersionNumberError and not tuf_adapter.is_version_mismatch(e), str(e)


@pytest.mark.parametrize("role", ["snapshot", "targets"])
def test_mix_and_match_message_is_a_version_mismatch(tmp_path, role):
    """A parent naming version N+1 (no length/hash to catch it first) served the role's version N."""
    world = make_world(tmp_path)
    meta = world.repo.metadata_dir
    if role == "targets":
        v = world.repo.snapshot().signed.meta["targets.json"].version
        (meta / f"{v + 1}.targets.json").write_bytes((meta / f"{v}.targets.json").read_bytes())
        resign(world.repo, world.ring, "snapshot", mutate=lambda s: s.meta.__setitem__("targets.json", MetaFile(v + 1)))
    else:
        v = world.repo.timestamp().signed.snapshot_meta.version
        (meta / f"{v + 1}.snapshot.json").write_bytes((meta / f"{v}.snapshot.json").read_bytes())
        resign(world.repo, world.ring, "timestamp", mutate=lambda t: setattr(t, "snapshot_meta", MetaFile(v + 1)))
    e = _raw_failure(world)
    assert type(e) is tuf_exc.BadVersionNumberError and tuf_adapter.is_version_mismatch(e), str(e)


def test_snapshot_dropping_a_file_says_missing_info(tmp_path):
    world = make_world(tmp_path)
    _seen_once(world)
    resign(world.repo, world.ring, "snapshot", mutate=lambda s: s.meta.pop("targets.json"))
    e = _raw_failure(world)
    assert tuf_adapter.is_missing_info(e) and not isinstance(e, tuf_exc.BadVersionNumberError), str(e)
    assert not tuf_adapter.is_missing_info(tuf_exc.RepositoryError("something else"))


def test_unsigned_message_counts_the_good_signatures(tmp_path):
    world = make_world(tmp_path, root_keys=3, root_threshold=2)
    md = Metadata.from_bytes((world.repo.metadata_dir / "1.root.json").read_bytes())
    payload = md.signed_bytes
    one = dict(list(md.signatures.items())[:1])
    with pytest.raises(tuf_exc.UnsignedMetadataError) as below:
        md.signed.verify_delegate("root", payload, one)
    assert tuf_adapter.good_signatures(below.value) == 1, str(below.value)
    with pytest.raises(tuf_exc.UnsignedMetadataError) as none:
        md.signed.verify_delegate("root", payload, {})
    assert tuf_adapter.good_signatures(none.value) == 0, str(none.value)


def test_translation_keeps_the_classes_the_threat_tests_expect():
    """The mapping reads the parsers above, not the raw text (one place to fix on an upgrade)."""
    from edgeops.trust import errors

    t = tuf_adapter.translate_tuf_error
    assert type(t(tuf_exc.UnsignedMetadataError("root was signed by 1/2 keys"), "x")) is errors.ThresholdError
    assert type(t(tuf_exc.UnsignedMetadataError("root was signed by 0/2 keys"), "x")) is errors.SignatureError
    assert type(t(tuf_exc.RepositoryError("New snapshot is missing info for 'targets.json'"), "x")) is errors.RollbackError
    assert type(t(tuf_exc.DownloadHTTPError("gone", 404), "x")) is errors.NotFoundError
