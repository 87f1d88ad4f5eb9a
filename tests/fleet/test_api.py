"""REST API, OpenAPI document, token auth, error mapping, /metrics and the HTTP repository."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

import pytest

from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole
from edgeops.fleet.registry import register_devices
from edgeops.fleet.rollouts.status import ACTION_FROM

TOKEN = "api-test-token"


@pytest.fixture(params=["sqlite", "postgresql"])
def console(request, tmp_path, fleet_repo):
    from tests.fleet.conftest import PG_OK, PG_URL

    db = {"url": f"sqlite:///{tmp_path / 'fleet.db'}"}
    if request.param == "postgresql":
        if not PG_OK:
            pytest.skip("PostgreSQL not reachable")
        import uuid

        db = {"url": PG_URL, "schema": f"edgeops_api_{uuid.uuid4().hex[:10]}"}
    cfg = config_from_dict(
        {
            "database": db,
            "repository": {"dir": str(fleet_repo["repo"]), "keys_dir": str(fleet_repo["keys"])},
            "api": {"bind": "127.0.0.1:0", "tokens": [TOKEN], "tokens_env": None},
            "base_dir": str(tmp_path),
        }
    )
    c = FleetConsole(cfg, mqtt=False, reconcile=False).start()
    register_devices(c.db, [{"id": f"d{i}", "tags": {"site": "x"}} for i in range(4)])
    yield c
    db_ = c.db
    c.stop()
    if request.param == "postgresql":
        db_.drop_all()


def call(console, method, path, body=None, token=TOKEN):
    req = urllib.request.Request(console.api_url + path, method=method, data=json.dumps(body).encode() if body is not None else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if r.headers.get("Content-Type", "").startswith("application/json") else raw)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw


def test_openapi_document(console):
    status, doc = call(console, "GET", "/openapi.json", token=None)
    assert status == 200 and doc["openapi"].startswith("3.")
    for action, allowed in ACTION_FROM.items():
        op = doc["paths"][f"/api/v1/rollouts/{{id}}/{action}"]["post"]
        assert sorted(s.value for s in allowed) == op["x-allowed-from"] and "Allowed from" in op["description"]
    assert "RolloutRequest" in doc["components"]["schemas"] and doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert {"/api/v1/devices", "/api/v1/events", "/api/v1/rollouts", "/api/v1/rollouts/{id}"} <= set(doc["paths"])


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


def test_metrics(console):
    status, body = call(console, "GET", "/metrics", token=None)
    text = body.decode()
    assert status == 200 and 'edgeops_devices{online="false"} 4.0' in text
    assert "edgeops_ingest_queue_depth" in text and "edgeops_reconciler_leader" in text


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
