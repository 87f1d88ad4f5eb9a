"""Signed commands (each accept/refuse transition) and the transports (directory, HTTP)."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import threading
import time

import pytest

from edgeops.protocol import Command
from edgeops.trust import errors
from edgeops.trust.client import TrustClient
from edgeops.trust.commands import CommandVerifier, check_assignment, parse_envelope, sign_command
from edgeops.trust.keys import Keyring
from edgeops.trust.transport import DirectoryTransport, HttpTransport, check_repo_path
from tests.edgeops.trust.helpers import make_world


@pytest.fixture
def ring(tmp_path):
    return Keyring.create(tmp_path / "keys", root_keys=1, root_threshold=1)


def _cmd(**kw) -> Command:
    fields = dict(device_id="dev-1", command_id="c", seq=1, expires=time.time() + 60, kind="rollback")
    fields.update(kw)
    return Command(**fields)


def test_envelope_is_dsse(ring):
    env = json.loads(sign_command(_cmd(), ring.signers("command")[0]))
    assert env["payloadType"] == "application/vnd.edgeops.command+json"
    assert json.loads(base64.b64decode(env["payload"]))["device_id"] == "dev-1"
    assert len(base64.b64decode(env["signatures"][0]["sig"])) == 64


def test_sequence_per_audience_persisted(ring, tmp_path):
    signer = ring.signers("command")[0]
    state = tmp_path / "state.json"
    v = CommandVerifier("dev-1", ring.public_keys("command"), state, cohorts={"canary"})
    assert v.verify(sign_command(_cmd(seq=3), signer)).seq == 3
    # A cohort has its own counter; the device's stays.
    assert v.verify(sign_command(_cmd(device_id="cohort:canary", seq=1), signer)).seq == 1
    # A restarted agent remembers both.
    v2 = CommandVerifier("dev-1", ring.public_keys("command"), state, cohorts={"canary"})
    assert v2.last_seq() == 3 and v2.last_seq("cohort:canary") == 1
    with pytest.raises(errors.ReplayError):
        v2.verify(sign_command(_cmd(seq=3), signer))
    with pytest.raises(errors.ReplayError):
        v2.verify(sign_command(_cmd(device_id="cohort:canary", seq=1), signer))
    assert v2.verify(sign_command(_cmd(seq=4), signer)).seq == 4


def test_signature_checked_before_payload_and_payload_type(ring, tmp_path):
    v = CommandVerifier("dev-1", ring.public_keys("command"), tmp_path / "s.json")
    env = json.loads(sign_command(_cmd(), ring.signers("command")[0]))
    env["payload"] = base64.b64encode(b'{"device_id": "dev-1"}').decode()
    with pytest.raises(errors.CommandSignatureError):
        v.verify(json.dumps(env).encode())
    env["payloadType"] = "application/json"
    with pytest.raises(errors.MalformedCommandError, match="payloadType"):
        v.verify(json.dumps(env).encode())
    with pytest.raises(errors.MalformedCommandError):
        parse_envelope(b"x" * 70000)
    assert not (tmp_path / "s.json").exists()


def test_corrupt_state_fails_closed(ring, tmp_path):
    state = tmp_path / "s.json"
    state.write_text("not json")
    v = CommandVerifier("dev-1", ring.public_keys("command"), state)
    with pytest.raises(errors.CommandError, match="corrupt"):
        v.verify(sign_command(_cmd(seq=99), ring.signers("command")[0]))


def test_check_assignment_exact_match(tmp_path):
    w = make_world(tmp_path)
    rec = w.client().get_bundle("digits", "1.0.0")
    good = _cmd(kind="assign", target_name=rec.name, target_sha256=rec.sha256, target_length=rec.length)
    check_assignment(good, rec)
    for bad in ({"target_name": "digits/2.0.0/digits-2.0.0.bundle"}, {"target_length": rec.length + 1}, {"target_sha256": None}):
        with pytest.raises(errors.AssignmentMismatchError):
            check_assignment(good.replace(**bad), rec)


@pytest.mark.parametrize("path", ["../etc/passwd", "metadata/../../x", "/metadata/x", "metadata/", "other/x", "metadata//x", "targets/./x"])
def test_repo_path_validation(path):
    with pytest.raises(errors.NotFoundError):
        check_repo_path(path)


def test_directory_transport_bounds_and_symlinks(tmp_path):
    repo = tmp_path / "repo"
    (repo / "metadata").mkdir(parents=True)
    (repo / "metadata" / "a.json").write_bytes(b"x" * 1000)
    (tmp_path / "secret").write_bytes(b"s")
    (repo / "metadata" / "link.json").symlink_to(tmp_path / "secret")
    t = DirectoryTransport(repo, chunk_bytes=64)
    assert len(b"".join(t.fetch("metadata/a.json", 100))) == 101
    with pytest.raises(errors.NotFoundError):
        t.fetch("metadata/missing.json", 10)
    with pytest.raises(errors.NotFoundError, match="outside"):
        t.fetch("metadata/link.json", 10)


@pytest.fixture
def http_repo(tmp_path):
    w = make_world(tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(w.repo.repo_dir))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield w, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_http_transport_end_to_end(http_repo, tmp_path):
    w, url = http_repo
    client = TrustClient(tmp_path / "dev-md", HttpTransport(url, timeout_s=5), root=w.repo.metadata_dir / "1.root.json")
    client.refresh()
    rec = client.get_bundle("digits", "1.0.0")
    out = client.download_target(rec, tmp_path / "dl" / "b.bundle")
    assert out.read_bytes() == w.bundle.read_bytes()
    with pytest.raises(errors.NotFoundError):
        list(HttpTransport(url).fetch("metadata/nope.json", 10))


def test_unreachable_repository_is_typed(tmp_path):
    w = make_world(tmp_path)
    client = TrustClient(tmp_path / "md", HttpTransport("http://127.0.0.1:9/", timeout_s=2), root=w.repo.metadata_dir / "1.root.json")
    with pytest.raises(errors.RepositoryUnavailableError):
        client.refresh()
