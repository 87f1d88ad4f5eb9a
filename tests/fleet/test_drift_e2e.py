"""Drift end to end with real parts: an agent (real onnxruntime, store, spool) fetches a bundle
with a drift reference from the console over a real mosquitto, serves brightened inputs, and the
console (real ingest, SQLite) shows the drift in GET /api/v1/drift and /metrics."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest

from edgeops.agent.config import parse_config
from edgeops.agent.core import Agent
from edgeops.agent.statefile import State
from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole
from edgeops.fleet.registry import register_devices
from tests.agent.helpers import TrustFixture, agent_config_dict
from tests.support.bundles import sample_inputs
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow
TOKEN = "drift-e2e-" + uuid.uuid4().hex[:6]


def _get(console, path: str):
    req = urllib.request.Request(console.api_url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return json.loads(body) if path.startswith("/api/") else body.decode()


def test_agent_sketches_reach_the_console_and_show_drift(tmp_path, mqtt_broker):
    tf = TrustFixture(tmp_path / "trust")
    pub = tf.publish("1.0.0", 1, reference=True)
    cfg = config_from_dict({
        "database": {"url": f"sqlite:///{tmp_path / 'fleet.db'}"},
        "repository": {"dir": str(tf.repo_dir), "keys_dir": str(tf.keys_dir)},
        "api": {"bind": "127.0.0.1:0", "tokens": [TOKEN], "tokens_env": None},
        "broker": {"url": mqtt_broker.url, "client_id": f"console-{uuid.uuid4().hex[:8]}"},
        "ingest": {"flush_interval_s": 0.05},
        "drift": {"min_samples": 100},
        "base_dir": str(tmp_path),
    })
    console = FleetConsole(cfg, reconcile=False)
    console.db.create_all()
    register_devices(console.db, [{"id": "cam-1", "tags": {"site": "south"}}])
    console.start()
    agent = None
    try:
        wait_for(lambda: console.mqtt_connected, 10, what="console connected")
        agent = Agent(parse_config(agent_config_dict(tmp_path, tf, device_id="cam-1", broker_url=mqtt_broker.url))).start()
        agent.submit(tf.command("assign", pub, device_id="cam-1"))
        wait_for(lambda: agent.persisted.state is State.COMMITTED, 60, what="v1 committed on the agent")
        x = sample_inputs(200, seed=5) + 1.5  # the camera got brighter
        for i in range(0, len(x), 4):
            agent.infer({"input": x[i : i + 4]})

        def scored():
            groups = _get(console, "/api/v1/drift?by=tag&bundle=digits@1.0.0")["groups"]
            return groups[0] if groups and groups[0]["samples"] >= 200 else None

        g = wait_for(scored, 30, what="the sketches of 200 inferences at the console")
        assert g["group"] == {"tag": "site=south"} and g["level"] == "alert" and g["reference"] is True
        assert all(v > 1.0 for v in g["tensors"]["input"]["mean_shift_sd"])
        text = _get(console, "/metrics")
        assert 'edgeops_drift_level{bundle="digits",version="1.0.0"} 2.0' in text
    finally:
        if agent is not None:
            agent.stop()
        console.stop()
