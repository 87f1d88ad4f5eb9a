"""Repository server: chunked MQTT answers, refusal of paths outside the repository, refresh."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta, timezone

from edgeops.fleet.repo_server import MqttRepositoryServer, RepositoryRefresher
from edgeops.fleet.targets import find_target
from edgeops.protocol import FetchRequest, decode_fetch_response
from edgeops.trust.client import target_file_path


def ask(server, path, offset=0, length=4096, device="d1"):
    sent = []
    server.publish = lambda topic, payload: sent.append((topic, payload))
    req = FetchRequest(request_id=f"r{offset}", path=path, offset=offset, length=length)
    server.handle(f"edgeops/v1/{device}/fetch/req", req.to_json().encode())
    assert len(sent) == 1 and sent[0][0] == f"edgeops/v1/{device}/fetch/resp"
    return decode_fetch_response(sent[0][1])


def test_bundle_in_chunks(fleet_repo):
    server = MqttRepositoryServer(fleet_repo["repo"], lambda *a: None)
    t = find_target(fleet_repo["repo"], "digits", "2.0.0")
    path = target_file_path(t.name, t.sha256)
    data, offset = b"", 0
    while True:
        header, chunk = ask(server, path, offset, 1000)
        assert header.status == "ok" and header.offset == offset and header.total == t.length and header.request_id == f"r{offset}"
        data += chunk
        offset += len(chunk)
        if header.eof:
            break
    assert len(data) == t.length and hashlib.sha256(data).hexdigest() == t.sha256
    assert server.stats["served"] > 1
    server.close()


def test_refuses_escapes_and_missing(fleet_repo, tmp_path):
    server = MqttRepositoryServer(fleet_repo["repo"], lambda *a: None)
    outside = tmp_path / "outside.json"
    outside.write_text("secret")
    link = fleet_repo["repo"] / "targets" / "link.json"
    os.symlink(outside, link)
    try:
        for path in ("metadata/../../outside.json", "targets/./x", "metadata/nope.json", "targets/link.json", "metadata/.hidden/../timestamp.json"):
            header, chunk = ask(server, path)
            assert header.status == "not_found" and chunk == b"", path
    finally:
        link.unlink()
    # malformed requests are counted and dropped, never answered or raised
    sent = []
    server.publish = lambda topic, payload: sent.append(topic)
    for payload in (b"junk", b'{"request_id": "x", "path": "/etc/passwd"}', b'{"request_id": "x", "path": "metadata/a", "length": 0}'):
        server.handle("edgeops/v1/d1/fetch/req", payload)
    server.handle("not/ours", FetchRequest(request_id="x", path="metadata/timestamp.json").to_json().encode())
    assert sent == [] and server.stats["malformed"] == 4
    server.close()


def test_refresher_resigns_before_expiry(tmp_path):
    from edgeops.trust.keys import Keyring
    from edgeops.trust.repository import Repository

    ring = Keyring.create(tmp_path / "keys", root_keys=1, root_threshold=1)
    # a repository whose timestamp (1-day validity) was signed 20 hours ago
    past = datetime.now(timezone.utc) - timedelta(hours=20)
    Repository.init(tmp_path / "repo", ring, clock=lambda: past)
    before = Repository(tmp_path / "repo").timestamp().signed
    refresher = RepositoryRefresher(tmp_path / "repo", tmp_path / "keys")
    done = refresher.check()
    assert "timestamp" in done
    after = Repository(tmp_path / "repo").timestamp().signed
    assert after.version > before.version and after.expires > before.expires
    assert refresher.check() == []  # nothing due any more
