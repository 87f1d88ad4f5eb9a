"""`edgeops fleet serve` itself serves the console at /ui/ on the API's address, with roles from
a fleet.toml ``[[api.access]]`` table (the file as a user writes it)."""

from __future__ import annotations

import os
import subprocess
import sys
import types
import urllib.error
import urllib.request
import uuid

import pytest

from edgeops.fleet.config import render_toml
from tests.fleet.test_access import _open, _sign_in
from tests.support.broker import MOSQUITTO, TestBroker, free_port
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")]


def _up(base: str) -> bool:
    try:
        return _open(urllib.request.build_opener(), base + "/healthz")[0] == 200
    except urllib.error.URLError:  # not listening yet
        return False


def test_fleet_serve_serves_the_console(tmp_path, fleet_repo):
    admin, viewer = "adm-" + uuid.uuid4().hex[:8], "view-" + uuid.uuid4().hex[:8]
    port = free_port()
    with TestBroker() as broker:
        cfg = tmp_path / "fleet.toml"
        text = render_toml(
            {
                "broker": {"url": broker.url, "client_id": "console-ui"},
                "database": {"url": f"sqlite:///{tmp_path / 'fleet.db'}"},
                "repository": {"dir": str(fleet_repo["repo"]), "keys_dir": str(fleet_repo["keys"])},
                "api": {"bind": f"127.0.0.1:{port}", "tokens": [admin]},
            }
        )
        cfg.write_text(text + f'\n[[api.access]]\nname = "vera"\nrole = "viewer"\ntoken = "{viewer}"\n')
        log = open(tmp_path / "console.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "edgeops.cli", "fleet", "serve", "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _up(base), 30, 0.3, "console up")
            status, _, body, headers = _open(urllib.request.build_opener(), base + "/ui/login")
            assert status == 200 and 'id="login"' in body and "default-src 'self'" in headers["Content-Security-Policy"]
            assert _open(urllib.request.build_opener(), base + "/ui/static/vendor/htmx.min.js")[0] == 200
            _, opener, status, url, body = _sign_in(types.SimpleNamespace(api_url=base), viewer)
            assert status == 200 and url.endswith("/ui/fleet") and "vera (viewer)" in body
            status, _, err, _ = _open(urllib.request.build_opener(), base + "/api/v1/rollouts", b'{"bundle": "digits@2.0.0"}', {"Authorization": f"Bearer {viewer}", "Content-Type": "application/json"}, "POST")
            assert status == 403 and "needs the operator role" in err
        finally:
            proc.terminate()
            proc.wait(20)
            log.close()
