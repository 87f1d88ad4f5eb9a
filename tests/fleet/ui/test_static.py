"""The console's vendored files match their lock, are served by the console itself, and no page loads
anything from another origin (consoles run air-gapped)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import urllib.request
from pathlib import Path

import pytest

from tests.fleet.test_access import VIEWER, _open, _sign_in
from tests.fleet.test_api import make_console

ROOT = Path(__file__).resolve().parents[3]


def _vendor_script():
    spec = importlib.util.spec_from_file_location("vendor_ui", ROOT / "scripts" / "vendor_ui.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_vendored_files_match_the_lock():
    mod = _vendor_script()
    assert mod.check() == []
    lock = json.loads(mod.LOCK.read_text())
    assert {name: entry["version"] for name, entry in lock["packages"].items()} == {name: version for name, version, _ in mod.PINS}
    assert all(e["integrity"].startswith("sha512-") for e in lock["packages"].values())


def test_check_notices_a_changed_file(tmp_path, monkeypatch):
    mod = _vendor_script()
    fake = tmp_path / "vendor"
    fake.mkdir()
    for f in mod.VENDOR.iterdir():
        (fake / f.name).write_bytes(f.read_bytes())
    (fake / "htmx.min.js").write_bytes(b"/* tampered */")
    monkeypatch.setattr(mod, "VENDOR", fake)
    monkeypatch.setattr(mod, "LOCK", fake / "vendor.lock.json")
    assert [p for p in mod.check() if "htmx.min.js" in p and "sha256" in p]


@pytest.fixture
def console(tmp_path, fleet_repo):
    c = make_console("sqlite", tmp_path, fleet_repo, access=[{"name": "vera", "token": VIEWER, "role": "viewer"}])
    yield c
    c.stop()


def test_pages_load_only_from_the_console(console):
    mod = _vendor_script()
    lock = json.loads(mod.LOCK.read_text())
    for entry in lock["packages"].values():
        for name, f in entry["files"].items():
            with urllib.request.urlopen(console.api_url + f"/ui/static/vendor/{name}") as r:
                assert hashlib.sha256(r.read()).hexdigest() == f["sha256"]
    _, opener, *_ = _sign_in(console, VIEWER)
    for path in ("/ui/fleet", "/ui/devices/d0", "/ui/rollouts", "/ui/bundles", "/ui/audit", "/ui/login"):
        status, _, body, headers = _open(opener, console.api_url + path)
        assert status == 200, path
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        refs = re.findall(r'(?:src|href)="([^"]+)"', body)
        assert refs and all(r.startswith(("/", "#", "data:")) for r in refs), (path, [r for r in refs if not r.startswith(("/", "#", "data:"))])
        for ref in {r for r in refs if r.startswith("/ui/static/")}:
            assert _open(opener, console.api_url + ref)[0] == 200, ref
