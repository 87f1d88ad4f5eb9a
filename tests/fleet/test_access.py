"""Roles per token, browser sessions and CSRF, against a real console's HTTP API (SQLite, no broker)."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request

import pytest

from edgeops.errors import ConfigError
from edgeops.fleet import access
from edgeops.fleet.config import config_from_dict
from tests.fleet.test_api import TOKEN, call, make_console

VIEWER, OPERATOR = "viewer-token-1", "operator-token-1"
ACCESS = [{"name": "vera", "token": VIEWER, "role": "viewer"}, {"name": "otto", "token": OPERATOR, "role": "operator"}]


@pytest.fixture
def console(tmp_path, fleet_repo):
    c = make_console("sqlite", tmp_path, fleet_repo, access=ACCESS)
    yield c
    c.stop()


def test_role_rules():
    assert access.role_needed("GET", "/api/v1/devices") == "viewer"
    assert access.role_needed("POST", "/api/v1/rollouts") == "operator"
    assert access.role_needed("POST", "/api/v1/rollouts/r-1/abort") == "operator"
    assert access.role_needed("POST", "/api/v1/devices/d0/self-test") == "operator"
    assert access.role_needed("GET", "/api/v1/access") == "admin"
    assert access.role_needed("POST", "/api/v1/something-new") == "admin"  # unnamed state changes: admin only
    assert access.allows("admin", "operator") and access.allows("operator", "viewer") and not access.allows("viewer", "operator")


def test_access_config_is_checked():
    with pytest.raises(ConfigError, match="role"):
        config_from_dict({"api": {"access": [{"name": "a", "token": "t", "role": "root"}]}})
    with pytest.raises(ConfigError, match="token or token_env"):
        config_from_dict({"api": {"access": [{"name": "a", "role": "viewer"}]}})
    cfg = config_from_dict({"api": {"tokens": ["legacy"], "tokens_env": None, "access": ACCESS}})
    assert cfg.api.token_roles() == [("vera", VIEWER, "viewer"), ("otto", OPERATOR, "operator"), ("token-1", "legacy", "admin")]


def test_viewer_reads_but_gets_403_naming_the_role(console):
    assert call(console, "GET", "/api/v1/devices", token=VIEWER)[0] == 200
    status, err = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@2.0.0", "waves": [50, 100]}, token=VIEWER)
    assert status == 403 and "needs the operator role" in err["error"] and "'vera'" in err["error"] and err["type"] == "Forbidden"
    status, err = call(console, "POST", "/api/v1/devices/d0/self-test", {"bundle": "digits@2.0.0"}, token=VIEWER)
    assert status == 403 and "operator" in err["error"]
    status, err = call(console, "GET", "/api/v1/access", token=OPERATOR)
    assert status == 403 and "needs the admin role" in err["error"]
    status, names = call(console, "GET", "/api/v1/access")  # the legacy api.tokens entry is an admin
    assert status == 200 and {"name": "vera", "role": "viewer"} in names and all("token" not in n for n in names)


def test_operator_acts_and_the_audit_names_who(console):
    status, r = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@2.0.0", "waves": [50, 100]}, token=OPERATOR)
    assert status == 201
    assert call(console, "POST", f"/api/v1/rollouts/{r['id']}/start", token=OPERATOR)[0] == 200
    assert call(console, "POST", f"/api/v1/rollouts/{r['id']}/abort", token=VIEWER)[0] == 403
    status, entries = call(console, "GET", "/api/v1/audit?limit=50", token=VIEWER)
    api = [x for x in entries if x["source"] == "api"]
    assert [x["what"] for x in api[:3]] == [f"POST /api/v1/rollouts/{r['id']}/abort -> 403", f"POST /api/v1/rollouts/{r['id']}/start -> 200", "POST /api/v1/rollouts -> 201"]
    assert api[0]["who"] == "vera (viewer)" and api[1]["who"] == "otto (operator)"
    assert "needs the operator role" in api[0]["detail"]  # a refusal says why
    assert api[1]["detail"] == f"id {r['id']}, bundle digits@2.0.0, status running"  # an action says what it did
    assert any(x["source"] == "rollout" and x["what"].endswith("status:running") for x in entries)  # the rollout's own decisions too


def _browser(console):
    jar = http.cookiejar.CookieJar()
    return jar, urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))


def _open(opener, url, data=None, headers=None, method=None):
    req = urllib.request.Request(url, data=urllib.parse.urlencode(data).encode() if isinstance(data, dict) else data, headers=headers or {}, method=method)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.geturl(), r.read().decode(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, url, e.read().decode(), e.headers


def _sign_in(console, token):
    jar, opener = _browser(console)
    status, _, body, headers = _open(opener, console.api_url + "/ui/login")
    form_csrf = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
    status, url, body, _ = _open(opener, console.api_url + "/ui/login", {"csrf": form_csrf, "token": token})
    return jar, opener, status, url, body


def test_sign_in_sets_a_strict_httponly_session_and_csrf_guards_state_changes(console):
    jar, opener, status, url, body = _sign_in(console, OPERATOR)
    assert status == 200 and url.endswith("/ui/fleet") and "otto (operator)" in body
    cookie = next(c for c in jar if c.name == access.SESSION_COOKIE)
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.get_nonstandard_attr("SameSite") == "Strict"
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', body).group(1)
    assert _open(opener, console.api_url + "/api/v1/devices")[0] == 200  # the cookie reads the API
    status, r = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@2.0.0", "waves": [50, 100]})
    start = console.api_url + f"/api/v1/rollouts/{r['id']}/start"
    status, _, err, _ = _open(opener, start, b"", method="POST")
    assert status == 403 and "CSRF" in err
    assert _open(opener, start, b"", {"X-CSRF-Token": "forged"}, "POST")[0] == 403
    assert _open(opener, start, b"", {"X-CSRF-Token": csrf}, "POST")[0] == 200
    # the create form checks its CSRF field too
    assert _open(opener, console.api_url + "/ui/rollouts/new", {"csrf": "forged", "bundle": "digits@2.0.0"})[0] == 403
    # sign out ends the session: the pages send the browser back to the sign-in form
    _open(opener, console.api_url + "/ui/logout", {"csrf": csrf})
    status, url, body, _ = _open(opener, console.api_url + "/ui/rollouts")
    assert url.endswith("/ui/login") and 'id="login"' in body


def test_sign_in_refuses_unknown_tokens_and_forms_without_their_csrf(console):
    *_, status, url, body = _sign_in(console, "not-a-token")
    assert status == 401 and "unknown token" in body
    _, opener = _browser(console)
    status, _, body, _ = _open(opener, console.api_url + "/ui/login", {"csrf": "x", "token": TOKEN})  # no login cookie: a cross-site post
    assert status == 403 and "expired" in body
    assert _open(opener, console.api_url + "/ui/fleet")[1].endswith("/ui/login")


def test_create_form_shows_the_cli_field_errors(console):
    _, opener, *_ = _sign_in(console, OPERATOR)
    _, _, body, _ = _open(opener, console.api_url + "/ui/rollouts")
    csrf = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
    status, _, body, _ = _open(opener, console.api_url + "/ui/rollouts/new", {"csrf": csrf, "bundle": "digits@2.0.0", "waves": "50%,20%"})
    assert status == 422 and re.search(r'id="error-waves">[^<]*waves: wave 2 \(20.0%\) is not above wave 1', body)
    status, _, body, _ = _open(opener, console.api_url + "/ui/rollouts/new", {"csrf": csrf, "bundle": "digits@9.9.9"})
    assert status == 422 and re.search(r'id="error-bundle">bundle digits@9.9.9: not a signed target', body)
    status, _, body, _ = _open(opener, console.api_url + "/ui/rollouts/new", {"csrf": csrf, "bundle": "digits@2.0.0", "max_latency_regression": "0.5"})
    assert status == 422 and 'id="error-max_latency_regression"' in body
    status, url, body, _ = _open(opener, console.api_url + "/ui/rollouts/new", {"csrf": csrf, "bundle": "digits@2.0.0", "waves": "50%,100%"})
    assert status == 200 and re.search(r"/ui/rollouts/r-[0-9a-f]+$", url) and 'data-action="start"' in body


def test_viewer_pages_offer_no_actions(console):
    status, r = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@2.0.0", "waves": [50, 100]})
    _, opener, status, _, body = _sign_in(console, VIEWER)
    assert status == 200 and "vera (viewer)" in body
    _, _, page, _ = _open(opener, console.api_url + f"/ui/rollouts/{r['id']}")
    assert "api-action" not in page and 'id="actions"' not in page
    _, _, page, _ = _open(opener, console.api_url + "/ui/rollouts")
    assert 'id="create-rollout"' not in page and "needs the operator role" in page
    _, _, page, _ = _open(opener, console.api_url + "/ui/devices/d0")
    assert 'id="self-test"' not in page
    assert "<h2>Drift (last" in page and "no drift sketches from this device" in page  # fleet/drift.py's per-device report, empty here


def test_live_fragments_answer_304_when_unchanged(console):
    _, opener, *_ = _sign_in(console, VIEWER)
    status, _, body, headers = _open(opener, console.api_url + "/ui/fleet/table?q=d1")
    assert status == 200 and "d1" in body and headers["ETag"]
    assert _open(opener, console.api_url + "/ui/fleet/table?q=d1", headers={"If-None-Match": headers["ETag"]})[0] == 304
    assert _open(opener, console.api_url + "/ui/fleet/table?q=d2", headers={"If-None-Match": headers["ETag"]})[0] == 200
