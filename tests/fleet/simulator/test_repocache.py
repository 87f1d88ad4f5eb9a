"""The per-process repository cache: immutable files once, mutable ones every time, all verified."""

from __future__ import annotations

import threading
import time

import pytest

from edgeops.fleet.simulator.repocache import CachingTransport, RepoCache, is_immutable
from edgeops.trust.errors import NotFoundError


class CountingTransport:
    """A transport over a dict of files that counts fetches (a unit-test fake of one module)."""

    def __init__(self, files, delay=0.0):
        self.files = dict(files)
        self.calls: list[str] = []
        self.delay = delay

    def fetch(self, path, max_length):
        self.calls.append(path)
        if self.delay:
            time.sleep(self.delay)
        if path not in self.files:
            raise NotFoundError(path)
        return iter([self.files[path][: max_length + 1]])


def read(t, path, n=10_000):
    return b"".join(t.fetch(path, n))


def test_immutable_paths():
    assert is_immutable("metadata/3.snapshot.json") and is_immutable("metadata/2.root.json")
    assert is_immutable("targets/digits/1.0.0/abc.digits-1.0.0.bundle")
    assert not is_immutable("metadata/timestamp.json") and not is_immutable("metadata/root.json")


def test_immutable_files_are_fetched_once_per_process_mutable_every_time():
    up = CountingTransport({"metadata/1.snapshot.json": b"S", "metadata/timestamp.json": b"T1", "targets/x/1/aa.x-1.bundle": b"B" * 100})
    cache = RepoCache()
    devices = [CachingTransport(cache, up) for _ in range(5)]
    for t in devices:
        assert read(t, "metadata/1.snapshot.json") == b"S"
        assert read(t, "targets/x/1/aa.x-1.bundle") == b"B" * 100
        assert read(t, "metadata/timestamp.json") == b"T1"
    assert up.calls.count("metadata/1.snapshot.json") == 1 and up.calls.count("targets/x/1/aa.x-1.bundle") == 1
    assert up.calls.count("metadata/timestamp.json") == 5
    up.files["metadata/timestamp.json"] = b"T2"
    assert read(devices[0], "metadata/timestamp.json") == b"T2"  # never stale


def test_not_found_is_not_cached_and_probes_reach_upstream():
    up = CountingTransport({})
    t = CachingTransport(RepoCache(), up)
    for _ in range(2):
        with pytest.raises(NotFoundError):
            read(t, "metadata/2.root.json")
    assert up.calls == ["metadata/2.root.json"] * 2
    up.files["metadata/2.root.json"] = b"R2"
    assert read(t, "metadata/2.root.json") == b"R2"


def test_max_length_is_respected_and_truncated_reads_are_not_kept():
    up = CountingTransport({"targets/a/1/bb.a-1.bundle": b"0123456789"})
    cache = RepoCache()
    t = CachingTransport(cache, up)
    assert read(t, "targets/a/1/bb.a-1.bundle", 4) == b"01234"  # max_length + 1: the TUF client sees it is too long
    assert cache.stats()["files"] == 0
    assert read(t, "targets/a/1/bb.a-1.bundle", 100) == b"0123456789"
    assert read(t, "targets/a/1/bb.a-1.bundle", 4) == b"01234"
    assert up.calls.count("targets/a/1/bb.a-1.bundle") == 2


def test_concurrent_requests_share_one_upstream_fetch():
    up = CountingTransport({"metadata/timestamp.json": b"T"}, delay=0.2)
    cache = RepoCache()
    out = []
    threads = [threading.Thread(target=lambda: out.append(read(CachingTransport(cache, up), "metadata/timestamp.json"))) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert out == [b"T"] * 6 and len(up.calls) == 1


def test_bad_paths_are_refused_before_any_fetch():
    up = CountingTransport({})
    with pytest.raises(NotFoundError):
        read(CachingTransport(RepoCache(), up), "../etc/passwd")
    assert up.calls == []


def test_tampered_bytes_from_the_cache_are_still_rejected_by_the_tuf_client(tmp_path):
    """The cache is not trusted: a device's TUF client checks the bundle's signed sha256."""
    from edgeops.trust.errors import TrustError
    from edgeops.trust.transport import DirectoryTransport
    from tests.agent.helpers import TrustFixture
    from edgeops.trust.client import TrustClient

    tf = TrustFixture(tmp_path / "tf")
    pub = tf.publish("1.0.0", 1)
    cache = RepoCache()
    t = CachingTransport(cache, DirectoryTransport(tf.repo_dir))
    client = TrustClient(tmp_path / "dev1", t, root=tf.root_json)
    client.refresh()
    rec = client.get_target(pub.target_name)
    client.download_target(rec, tmp_path / "ok.bundle")
    # poison the shared cache entry of the bundle
    path = next(p for p in cache._files if p.startswith("targets/"))
    data, at = cache._files[path]
    cache._files[path] = (data[:-1] + bytes([data[-1] ^ 1]), at)
    other = TrustClient(tmp_path / "dev2", t, root=tf.root_json)
    other.refresh()
    with pytest.raises(TrustError):
        other.download_target(other.get_target(pub.target_name), tmp_path / "bad.bundle")
    assert not (tmp_path / "bad.bundle").exists()


# -- the freshness bound (a device's latest command) -------------------------------------------


class FlakyTransport(CountingTransport):
    """Raises RepositoryUnavailableError for the next ``fail`` fetches."""

    def __init__(self, files, fail=0):
        super().__init__(files)
        self.fail = fail

    def fetch(self, path, max_length):
        if self.fail:
            self.fail -= 1
            self.calls.append(path)
            from edgeops.trust.errors import RepositoryUnavailableError

            raise RepositoryUnavailableError(f"{path}: broker down")
        return super().fetch(path, max_length)


def bounded(cache, up, not_before):
    t = CachingTransport(cache, up)
    t.not_before = not_before
    return t


def test_mutable_answers_are_shared_only_with_devices_whose_command_came_before_the_fetch():
    up = CountingTransport({"metadata/timestamp.json": b"T1"})
    cache = RepoCache()
    t0 = time.monotonic()
    first = bounded(cache, up, t0)
    assert read(first, "metadata/timestamp.json") == b"T1"
    # commands that arrived before that fetch was made: the repository's answer after them is this one
    for _ in range(5):
        assert read(bounded(cache, up, t0), "metadata/timestamp.json") == b"T1"
    assert up.calls.count("metadata/timestamp.json") == 1 and cache.stats()["shared"] == 5
    # a command that arrived after it: the device asks the repository itself, and sees the new version
    up.files["metadata/timestamp.json"] = b"T2"
    later = bounded(cache, up, time.monotonic() + 0.001)
    time.sleep(0.002)
    assert read(later, "metadata/timestamp.json") == b"T2"
    assert up.calls.count("metadata/timestamp.json") == 2
    # and a device without a bound never reuses a finished answer
    assert read(CachingTransport(cache, up), "metadata/timestamp.json") == b"T2"
    assert up.calls.count("metadata/timestamp.json") == 3


def test_a_shared_not_found_respects_the_bound_and_a_new_root_is_seen():
    up = CountingTransport({})
    cache = RepoCache()
    t0 = time.monotonic()
    for _ in range(3):
        with pytest.raises(NotFoundError):
            read(bounded(cache, up, t0), "metadata/2.root.json")
    assert up.calls == ["metadata/2.root.json"]  # one probe answered three devices
    up.files["metadata/2.root.json"] = b"R2"  # a root rotation is published
    time.sleep(0.002)
    assert read(bounded(cache, up, time.monotonic()), "metadata/2.root.json") == b"R2"
    assert up.calls == ["metadata/2.root.json"] * 2


def test_repository_errors_are_never_shared():
    from edgeops.trust.errors import RepositoryUnavailableError

    up = FlakyTransport({"metadata/timestamp.json": b"T"}, fail=1)
    cache = RepoCache()
    t0 = time.monotonic()
    with pytest.raises(RepositoryUnavailableError):
        read(bounded(cache, up, t0), "metadata/timestamp.json")
    assert read(bounded(cache, up, t0), "metadata/timestamp.json") == b"T"  # asked again, not the error
    assert up.calls == ["metadata/timestamp.json"] * 2


def test_a_cut_answer_does_not_serve_a_longer_request():
    up = CountingTransport({"metadata/timestamp.json": b"0123456789"})
    cache = RepoCache()
    t0 = time.monotonic()
    assert read(bounded(cache, up, t0), "metadata/timestamp.json", 3) == b"0123"
    assert read(bounded(cache, up, t0), "metadata/timestamp.json", 2) == b"012"  # a prefix of the same answer
    assert read(bounded(cache, up, t0), "metadata/timestamp.json", 100) == b"0123456789"  # asked upstream again
    assert up.calls == ["metadata/timestamp.json"] * 2


def test_overlapping_requests_of_bounded_devices_share_one_fetch():
    up = CountingTransport({"metadata/timestamp.json": b"T"}, delay=0.2)
    cache = RepoCache()
    t0 = time.monotonic()
    out = []
    threads = [threading.Thread(target=lambda: out.append(read(bounded(cache, up, t0), "metadata/timestamp.json"))) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert out == [b"T"] * 6 and len(up.calls) == 1
