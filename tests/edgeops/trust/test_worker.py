"""The TUF worker process: same answers as the in-process client, typed failures, no TUF in the parent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeops.trust import errors
from edgeops.trust.client import TrustClient
from edgeops.trust.targets import target_path
from edgeops.trust.transport import DirectoryTransport
from edgeops.trust.worker import IsolatedTrustClient
from tests.edgeops.trust.helpers import make_bundle, make_world

REPO_ROOT = Path(__file__).resolve().parents[3]


def _isolated(w, **kw) -> IsolatedTrustClient:
    return IsolatedTrustClient(w.metadata_dir, DirectoryTransport(w.repo.repo_dir), root=w.repo.metadata_dir / "1.root.json", **kw)


def _fake_child(tmp_path: Path, body: str) -> str:
    """An executable that stands in for the worker's interpreter (it ignores its arguments)."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!{sys.executable}\nimport sys, time, json\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_worker_answers_as_the_in_process_client(tmp_path):
    w = make_world(tmp_path)
    w.repo.publish(make_bundle(tmp_path / "v2.bundle", version="2.0.0", release=2), w.ring)
    isolated = _isolated(w)
    isolated.refresh()
    local = TrustClient(tmp_path / "local-metadata", DirectoryTransport(w.repo.repo_dir), root=w.repo.metadata_dir / "1.root.json")
    local.refresh()
    assert isolated.trusted_versions() == local.trusted_versions()
    assert {t.name: t.to_wire() for t in isolated.targets()} == {t.name: t.to_wire() for t in local.targets()}
    record = isolated.get_target(target_path("digits", "2.0.0"))
    assert record.release == 2 and record.sha256 == local.get_target(record.name).sha256
    assert [(k.keyid, k.public.hex()) for k in isolated.command_keys()] == [(k.keyid, k.keyval["public"]) for k in local.command_keys()]
    # The child wrote the verified metadata cache, as the in-process client does.
    assert json.loads((w.metadata_dir / "timestamp.json").read_bytes())["signed"]["version"] == local.trusted_versions()["timestamp"]
    with pytest.raises(errors.UnknownTargetError):
        isolated.get_target("digits/9.9.9/digits-9.9.9.bundle")
    out = isolated.download_target(record, tmp_path / "dl" / "b.bundle")
    assert out.stat().st_size == record.length


def test_parent_keeps_no_tuf_code_resident(tmp_path):
    w = make_world(tmp_path)
    code = (
        "import sys\n"
        "from edgeops.trust.worker import IsolatedTrustClient\n"
        "from edgeops.trust.transport import DirectoryTransport\n"
        f"c = IsolatedTrustClient({str(w.metadata_dir)!r}, DirectoryTransport({str(w.repo.repo_dir)!r}), root={str(w.repo.metadata_dir / '1.root.json')!r})\n"
        "c.refresh(); c.command_keys()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tuf', 'securesystemslib', 'cryptography'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_typed_error_in_the_child_reaches_the_parent_as_that_type(tmp_path):
    w = make_world(tmp_path)
    (w.repo.metadata_dir / "timestamp.json").write_bytes(b'{"signed": "nonsense"}')
    with pytest.raises(errors.MalformedMetadataError, match="timestamp"):
        _isolated(w).refresh()


def test_a_transport_failure_in_the_parent_reaches_the_child_and_back(tmp_path):
    w = make_world(tmp_path)

    class Down:
        def fetch(self, path, max_length):
            raise errors.RepositoryUnavailableError(f"{path}: broker down")

    client = IsolatedTrustClient(w.metadata_dir, Down(), root=w.repo.metadata_dir / "1.root.json")
    with pytest.raises(errors.RepositoryUnavailableError, match="broker down"):
        client.refresh()


def test_a_silent_child_is_killed_after_the_timeout(tmp_path):
    w = make_world(tmp_path)
    python = _fake_child(tmp_path, "time.sleep(60)")
    t0 = time.monotonic()
    with pytest.raises(errors.RepositoryUnavailableError, match="no answer"):
        _isolated(w, python=python, timeout_s=1.0).refresh()
    assert time.monotonic() - t0 < 10


def test_a_child_that_dies_is_a_retryable_failure(tmp_path):
    w = make_world(tmp_path)
    with pytest.raises(errors.RepositoryUnavailableError, match="exited with code 3"):
        _isolated(w, python=_fake_child(tmp_path, "sys.exit(3)")).refresh()


@pytest.mark.parametrize(
    "line, expected",
    [
        ("not json", errors.MalformedMetadataError),
        ("[1, 2]", errors.MalformedMetadataError),
        ('{"what": 1}', errors.MalformedMetadataError),
        ('{"result": {"versions": {}, "targets": [{"name": "x"}]}}', errors.MalformedMetadataError),
        ('{"error": "RollbackError", "message": "timestamp v1 < v2"}', errors.RollbackError),
        ('{"error": "SystemExit", "message": "not a trust error"}', errors.TrustError),
    ],
)
def test_what_the_parent_accepts_from_a_child(tmp_path, line, expected):
    w = make_world(tmp_path)
    python = _fake_child(tmp_path, f"sys.stdin.readline(); print({line!r}, flush=True)")
    with pytest.raises(expected) as info:
        _isolated(w, python=python).refresh()
    assert type(info.value) is expected


def test_child_exits_when_its_parent_is_gone(tmp_path):
    w = make_world(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "edgeops.trust.worker", str(w.metadata_dir), str(w.repo.metadata_dir / "1.root.json")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT)
    proc.stdin.write(b'{"op": "refresh"}\n')
    proc.stdin.flush()
    first = json.loads(proc.stdout.readline())
    assert first["fetch"].startswith("metadata/")  # it asks the parent for a file ...
    proc.stdin.close()  # ... and the parent dies (the pipe closes)
    assert proc.wait(timeout=30) == 0
    proc.stdout.close()


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(errors.KeyFileError, match="root"):
        IsolatedTrustClient(tmp_path / "md", DirectoryTransport(tmp_path), root=tmp_path / "nope.json")
    with pytest.raises(errors.KeyFileError, match="provision"):
        IsolatedTrustClient(tmp_path / "md", DirectoryTransport(tmp_path), root=None)
