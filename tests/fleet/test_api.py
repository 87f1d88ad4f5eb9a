"""REST API, OpenAPI document, token auth, error mapping, /metrics and the HTTP repository."""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
import uuid

import pytest

from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole
from edgeops.fleet.registry import register_devices
from edgeops.fleet.rollouts.status import ACTION_FROM

TOKEN = "api-test-token"


def make_console(kind: str, tmp_path, fleet_repo, repo_dir=None, **api):
    """An in-process console (no MQTT) on SQLite or a fresh PostgreSQL schema, with devices d0..d3."""
    from tests.fleet.conftest import PG_OK, PG_URL

    db = {"url": f"sqlite:///{tmp_path / 'fleet.db'}"}
    if kind == "postgresql":
        if not PG_OK:
            pytest.skip("PostgreSQL not reachable")
        db = {"url": PG_URL, "schema": f"edgeops_api_{uuid.uuid4().hex[:10]}"}
    cfg = config_from_dict(
        {
            "database": db,
            "repository": {"dir": str(repo_dir or fleet_repo["repo"]), "keys_dir": str(fleet_repo["keys"])},
            "api": {"bind": "127.0.0.1:0", "tokens": [TOKEN], "tokens_env": None, **api},
            "base_dir": str(tmp_path),
        }
    )
    c = FleetConsole(cfg, mqtt=False, reconcile=False).start()
    register_devices(c.db, [{"id": f"d{i}", "tags": {"site": "x"}} for i in range(4)])
    return c


def stop_console(c, kind: str) -> None:
    db_ = c.db
    c.stop()
    if kind == "postgresql":
        db_.drop_all()


@pytest.fixture(params=["sqlite", "postgresql"])
def console(request, tmp_path, fleet_repo):
    c = make_console(request.param, tmp_path, fleet_repo)
    yield c
    stop_console(c, request.param)


def call(console, method, path, body=None, token=TOKEN, raw=None, headers=None, full=False):
    """One request; (status, decoded JSON or bytes), plus the response headers when ``full``."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(console.api_url + path, method=method, data=data)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            out = r.read()
            status, hdrs = r.status, r.headers
            ctype = r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        out, status, hdrs, ctype = e.read(), e.code, e.headers, e.headers.get("Content-Type", "")
    decoded = json.loads(out) if ctype.startswith("application/json") else out
    return (status, decoded, hdrs) if full else (status, decoded)


def test_openapi_document(console):
    from openapi_spec_validator import validate

    status, doc = call(console, "GET", "/openapi.json", token=None)
    assert status == 200 and doc["openapi"] == "3.1.0"
    validate(doc)  # the document the console serves is valid OpenAPI 3.1 (3.0.3 with `type: null` was not)
    for action, allowed in ACTION_FROM.items():
        op = doc["paths"][f"/api/v1/rollouts/{{id}}/{action}"]["post"]
        assert sorted(s.value for s in allowed) == op["x-allowed-from"] and "Allowed from" in op["description"]
    assert "RolloutRequest" in doc["components"]["schemas"] and doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {"/api/v1/devices", "/api/v1/events", "/api/v1/rollouts", "/api/v1/rollouts/{id}"} <= set(doc["paths"])
    limit = next(p for p in doc["paths"]["/api/v1/devices"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 10_000}  # the range the server enforces


def test_token_required(console):
    assert call(console, "GET", "/api/v1/devices", token=None)[0] == 401
    assert call(console, "GET", "/api/v1/devices", token="wrong")[0] == 401
    status, devices = call(console, "GET", "/api/v1/devices")
    assert status == 200 and [d["id"] for d in devices] == ["d0", "d1", "d2", "d3"]
    assert call(console, "GET", "/api/v1/devices/d2")[1]["tags"] == {"site": "x"}
    status, err = call(console, "GET", "/api/v1/devices/nope")
    assert status == 404 and "nope" in err["error"]
    assert call(console, "GET", "/healthz", token=None)[0] == 200


def test_rollout_lifecycle_and_errors(console):
    status, err = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@2.0.0", "waves": "50%,20%"})
    assert status == 422 and "waves" in err["error"]
    status, err = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@2.0.0", "max_latency_regression": 0.5})
    assert status == 422 and "max_latency_regression" in err["error"]
    status, err = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@9.0.0"})
    assert status == 400 and "digits@9.0.0" in err["error"]
    status, err = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@2.0.0", "surprise": 1})
    assert status == 422 and "surprise" in err["error"]
    req = urllib.request.Request(console.api_url + "/api/v1/rollouts", method="POST", data=b"{not json", headers={"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400
    status, r = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@2.0.0", "waves": [50, 100], "bake": "1m"})
    assert status == 201 and r["status"] == "created" and r["settings"]["bake_s"] == 60
    rid = r["id"]
    assert call(console, "POST", f"/api/v1/rollouts/{rid}/resume")[0] == 409
    status, r = call(console, "POST", f"/api/v1/rollouts/{rid}/start")
    assert status == 200 and r["status"] == "running"
    status, err = call(console, "POST", f"/api/v1/rollouts/{rid}/start")
    assert status == 409 and "allowed from: created" in err["error"]
    assert call(console, "POST", f"/api/v1/rollouts/{rid}/pause")[1]["status"] == "paused"
    assert call(console, "POST", f"/api/v1/rollouts/{rid}/abort")[1]["status"] == "aborting"
    assert call(console, "POST", "/api/v1/rollouts/r-missing/start")[0] == 404
    assert call(console, "POST", f"/api/v1/rollouts/{rid}/explode")[0] == 404
    status, rows = call(console, "GET", "/api/v1/rollouts")
    assert status == 200 and rows[0]["id"] == rid
    status, hist = call(console, "GET", f"/api/v1/rollouts/{rid}?history=1")
    assert [h["action"] for h in hist["history"]] == ["create", "status:running", "status:paused", "status:aborting"]
    assert call(console, "GET", f"/api/v1/rollouts/{rid}/devices")[1] == []
    assert call(console, "GET", "/api/v1/events?limit=x")[0] == 400


def test_metrics_need_the_token(console):
    assert call(console, "GET", "/metrics", token=None)[0] == 401
    assert call(console, "GET", "/metrics", token="wrong")[0] == 401
    status, body = call(console, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and 'edgeops_devices{online="false"} 4.0' in text
    assert "edgeops_ingest_queue_depth" in text and "edgeops_reconciler_leader" in text


def test_metrics_public_when_configured(tmp_path, fleet_repo):
    public = make_console("sqlite", tmp_path, fleet_repo, metrics_public=True)
    try:
        status, body = call(public, "GET", "/metrics", token=None)
        assert status == 200 and b"edgeops_devices" in body
    finally:
        public.stop()


def test_bearer_scheme_is_case_insensitive(console):
    for header in (f"bearer {TOKEN}", f"BEARER {TOKEN}", f"BeArEr   {TOKEN}"):
        assert call(console, "GET", "/api/v1/devices", token=None, headers={"Authorization": header})[0] == 200, header
    for header in (f"Bearer{TOKEN}", f"Basic {TOKEN}", "bearer", f"bearer {TOKEN}x", f"token {TOKEN}"):
        assert call(console, "GET", "/api/v1/devices", token=None, headers={"Authorization": header})[0] == 401, header


@pytest.mark.parametrize(
    "path, name, expected",
    [
        ("/api/v1/devices?limit=99999999999999999999", "limit", "1 to 10000"),
        ("/api/v1/devices?limit=-1", "limit", "1 to 10000"),
        ("/api/v1/devices?limit=0", "limit", "1 to 10000"),
        ("/api/v1/devices?limit=2&offset=-1", "offset", "0 to 2147483647"),
        ("/api/v1/devices?limit=2&offset=99999999999999999999", "offset", "0 to 2147483647"),
        ("/api/v1/devices?limit=1e3", "limit", "1 to 10000"),
        ("/api/v1/devices?online=maybe", "online", "true or false"),
        ("/api/v1/events?limit=10001", "limit", "1 to 10000"),
        ("/api/v1/events?limit=-1", "limit", "1 to 10000"),
        ("/api/v1/events?since=nan", "since", "finite"),
        ("/api/v1/events?since=1e999", "since", "finite"),
        ("/api/v1/events?kind=exploded", "kind", "command_accepted"),
        ("/api/v1/events?device=%00", "device", "device id"),
        ("/api/v1/events?device=d0%0A", "device", "device id"),  # $ of a pattern also matches before a final newline
        ("/api/v1/events?command_id=abc%0A", "command_id", "printable"),
        ("/api/v1/events?command_id=a%00b", "command_id", "printable"),
        ("/api/v1/rollouts?status=sideways", "status", "running"),
    ],
)
def test_query_parameters_are_bounded(console, path, name, expected):
    status, err, headers = call(console, "GET", path, full=True)
    assert status == 400, (path, status, err)
    assert err["error"].startswith(f"query parameter {name}:") and expected in err["error"] and err["type"] == "RequestError"
    assert err["request_id"] == headers["X-Request-Id"]


def test_paging(console):
    status, rows = call(console, "GET", "/api/v1/devices?limit=2&offset=1")
    assert status == 200 and [d["id"] for d in rows] == ["d1", "d2"]
    assert [d["id"] for d in call(console, "GET", "/api/v1/devices?limit=10000")[1]] == ["d0", "d1", "d2", "d3"]
    assert call(console, "GET", "/api/v1/devices?online=false&limit=1")[1][0]["id"] == "d0"


def test_request_bodies_are_limited(console):
    deep = b"[" * 30_000 + b"]" * 30_000  # under the size cap; json.loads alone raises RecursionError on this
    for path in ("/api/v1/rollouts", "/api/v1/devices/d0/self-test"):
        status, err = call(console, "POST", path, raw=deep)
        assert status == 400 and "nested deeper than 16" in err["error"], (path, err)
    nested = {"bundle": "digits@2.0.0", "select": "all"}
    for _ in range(20):
        nested = {"x": nested}
    assert call(console, "POST", "/api/v1/rollouts", nested)[0] == 400
    brackets_in_text = {"bundle": "digits@2.0.0", "name": "[" * 90 + "{" * 90 + "\\\"\\\\"}  # brackets in a string do not nest
    status, r = call(console, "POST", "/api/v1/rollouts", brackets_in_text)
    assert status == 201 and r["settings"]["name"] == brackets_in_text["name"]
    status, err = call(console, "POST", "/api/v1/rollouts", raw=b'{"bundle": "' + b"x" * 70_000 + b'"}')
    assert status == 413 and err["type"] == "RequestEntityTooLarge" and "65536" in err["error"]
    status, err = call(console, "POST", "/api/v1/rollouts", raw=b'{"bundle": "digits@2.0.0", "min_reporting": NaN}')
    assert status == 400 and "NaN" in err["error"]
    status, err = call(console, "POST", "/api/v1/rollouts", raw=b'{"bundle": "digits@2.0.0", "max_failure_rate": 1e999}')
    assert status == 400 and "range" in err["error"]
    status, err = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@2.0.0", "name": "a\x00b"})
    assert status == 400 and err["error"].startswith("name: text may not contain NUL")  # PostgreSQL cannot store it: was a 500
    status, err = call(console, "POST", "/api/v1/rollouts", raw=b"[1, 2]")
    assert status == 400 and "JSON object" in err["error"]
    assert len(call(console, "GET", "/api/v1/rollouts")[1]) == 1  # only the good one was created


def test_error_bodies_are_generic_and_logged_with_a_request_id(tmp_path, fleet_repo, caplog):
    """A console fault (its repository folder is gone) is a 500 that shows no exception text or path."""
    import shutil

    repo = tmp_path / "repo-copy"
    shutil.copytree(fleet_repo["repo"], repo)
    c = make_console("sqlite", tmp_path, fleet_repo, repo_dir=repo)
    try:
        # client errors keep their message, but not the console's folders
        status, err = call(c, "POST", "/api/v1/devices/d0/self-test", {"bundle": "digits@9.0.0"})
        assert status == 404 and "digits@9.0.0" in err["error"] and str(tmp_path) not in err["error"]
        shutil.rmtree(repo / "metadata")
        with caplog.at_level(logging.ERROR, logger="edgeops.fleet.api"):
            status, err, headers = call(c, "POST", "/api/v1/rollouts", {"bundle": "digits@2.0.0"}, full=True)
        assert status == 500 and err["type"] == "InternalError", err
        rid = headers["X-Request-Id"]
        assert err["request_id"] == rid and rid in err["error"]
        assert str(tmp_path) not in json.dumps(err) and "metadata" not in json.dumps(err) and "Error" not in err["error"]
        logged = [r for r in caplog.records if rid in r.getMessage()]
        assert logged and str(repo) in "".join(logging.Formatter().formatException(r.exc_info) for r in logged if r.exc_info)
        # a sane id the client sends is kept (logs can be joined); a wild one is replaced
        assert call(c, "GET", "/api/v1/devices", full=True, headers={"X-Request-Id": "lb-1234.abc"})[2]["X-Request-Id"] == "lb-1234.abc"
        wild = call(c, "GET", "/api/v1/devices", full=True, headers={"X-Request-Id": "x" * 100})[2]["X-Request-Id"]
        assert wild != "x" * 100 and len(wild) == 32
    finally:
        c.stop()


def test_unknown_bundle_error_names_no_path(console, fleet_repo):
    status, err = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@9.0.0"})
    assert status == 400 and "digits@9.0.0" in err["error"] and "digits@2.0.0" in err["error"]
    assert str(fleet_repo["repo"]) not in err["error"]


def test_unknown_routes_and_methods_answer_json(console):
    status, err, headers = call(console, "GET", "/api/v1/nothing-here", full=True)
    assert status == 404 and err["type"] == "NotFound" and err["request_id"] == headers["X-Request-Id"]
    status, err, headers = call(console, "DELETE", "/api/v1/devices", full=True)
    assert status == 405 and "GET" in headers["Allow"] and err["type"] == "MethodNotAllowed"
    assert call(console, "GET", "/api/v1/devices/" + "x" * 300)[0] == 404
    assert call(console, "GET", "/api/v1/devices/d0%0A")[0] == 404


def test_http_repository(console, fleet_repo, tmp_path):
    status, body = call(console, "GET", "/repo/metadata/timestamp.json", token=None)
    body = body if isinstance(body, dict) else json.loads(body)
    assert status == 200 and body["signed"]["_type"] == "timestamp"
    for bad in ("/repo/metadata/../../fleet.db", "/repo/metadata/%2e%2e/%2e%2e/fleet.db", "/repo/other/x", "/repo/metadata/", "/repo/targets/nope.bundle"):
        assert call(console, "GET", bad, token=None)[0] == 404, bad
    link = fleet_repo["repo"] / "metadata" / "escape.json"
    (tmp_path / "secret.json").write_text("{}")
    os.symlink(tmp_path / "secret.json", link)
    try:
        assert call(console, "GET", "/repo/metadata/escape.json", token=None)[0] == 404
    finally:
        link.unlink()
