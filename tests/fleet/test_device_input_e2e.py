"""Issue 13, findings 2, 3, 4 and 8, against a real console (SQLite), a real mosquitto and
scripted devices: what one device sends cannot cost another device's data, wedge or sway a
rollout, or create metric series.

The crafted messages are published by a plain MQTT client on the topics of a device, as a device
with its own broker credentials can (the broker's ACL confines a device to its own topics, and
these messages stay on them).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole
from edgeops.fleet.registry import register_devices
from edgeops.fleet.rollouts import service
from edgeops.fleet.rollouts.settings import parse_request
from edgeops.protocol import state_topic, telemetry_topic
from edgeops.trust.keys import Keyring
from tests.fleet.scripted_device import ScriptedDevice, SharedTrust
from tests.support.broker import MOSQUITTO, TestBroker
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")]

TOKEN = "test-token-" + uuid.uuid4().hex[:8]
BERLIN = [f"dev{i:02d}" for i in range(4)]


@pytest.fixture(scope="module")
def env(tmp_path_factory, fleet_repo):
    """mosquitto, a console on SQLite, four scripted berlin devices and one in paris (outside every rollout here)."""
    tmp = tmp_path_factory.mktemp("device-input")
    broker = TestBroker().start()
    cfg = config_from_dict(
        {
            "broker": {"url": broker.url, "client_id": f"console-{uuid.uuid4().hex[:6]}"},
            "database": {"url": f"sqlite:///{tmp / 'fleet.db'}"},
            "repository": {"dir": str(fleet_repo["repo"]), "keys_dir": str(fleet_repo["keys"])},
            "api": {"bind": "127.0.0.1:0", "tokens": [TOKEN]},
            "rollouts": {"reconcile_interval_s": 0.3, "offline_timeout_s": 60},
            "ingest": {"flush_interval_s": 0.05},
            "base_dir": str(tmp),
        }
    )
    console = FleetConsole(cfg)
    console.db.create_all()
    register_devices(console.db, [{"id": d, "tags": {"site": "berlin"}, "profile": "x86"} for d in BERLIN] + [{"id": "paris0", "tags": {"site": "paris"}, "profile": "x86"}])
    console.start()
    keys = Keyring.load(fleet_repo["keys"]).public_keys("command")
    trust = SharedTrust(fleet_repo["repo"], tmp / "trust-cache")
    devices = {d: ScriptedDevice(d, broker.port, keys, trust, tmp).start() for d in BERLIN + ["paris0"]}
    raw = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    raw.connect("127.0.0.1", broker.port)
    raw.loop_start()
    wait_for(lambda: all(api(console, f"/api/v1/devices/{d}")["online"] for d in devices), 30, what="devices online")
    yield {"console": console, "devices": devices, "raw": raw}
    raw.loop_stop()
    raw.disconnect()
    for d in devices.values():
        d.stop()
    console.stop()
    broker.stop()


def api(console, path: str, raw: bool = False):
    req = urllib.request.Request(console.api_url + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
    return body.decode() if raw else json.loads(body)


def publish(env, topic: str, body: dict) -> None:
    env["raw"].publish(topic, json.dumps(body).encode(), qos=1).wait_for_publish(10)


def batch(device: str, seq: int, version: str = "digits@1.0.0", ts: float | None = None, **fields) -> dict:
    ts = ts if ts is not None else time.time()
    name, ver = version.split("@")
    return {"device_id": device, "seq": seq, "ts_start": ts - 10, "ts_end": ts, "active": {"name": name, "version": ver}, "inference_count": 100, "latency_p95_ms": 4.0, **fields}


def stats(env) -> dict:
    return env["console"].ingest.stats.snapshot()


# The judged gates compare the wave with the selected devices still on the old version, over the
# same window: with 4 devices, 2 per cohort are enough here, and half are held back as the control.
JUDGE = {"judge_min_devices": 2, "control_share": 0.5, "judge_look_interval": 0}


def run_rollout(env, version: str, **gates) -> dict:
    """Run a rollout to its end while every berlin device reports telemetry on its active version."""
    db = env["console"].db
    r = service.create_rollout(db, parse_request({"bundle": version, "select": "tag=site=berlin", "waves": "50%,100%", **JUDGE, **gates}), env["console"].repo_dir)
    service.start_rollout(db, r["id"])
    env["console"].wake()

    def ended():
        for d in BERLIN:
            env["devices"][d].telemetry(env["devices"][d].active)
        s = service.rollout_status(db, r["id"])
        return s if s["status"] in ("finished", "paused", "aborted") else None

    try:
        return wait_for(ended, 60, 0.5, f"rollout {r['id']} to end")
    except AssertionError as e:
        raise AssertionError(f"{e}: {json.dumps(service.rollout_status(db, r['id']), indent=1)}") from None


def test_one_bad_message_never_costs_the_batch(env):
    """Finding 2: seq 2^63 in one message made the whole ingest batch (another device's 50 messages) fail four times and vanish."""
    before = stats(env)
    bodies = [(telemetry_topic("dev00"), batch("dev00", 10_000 + i)) for i in range(50)]
    bodies.insert(25, (telemetry_topic("paris0"), batch("paris0", 2**63)))
    for topic, body in bodies:
        env["raw"].publish(topic, json.dumps(body).encode(), qos=1)
    wait_for(lambda: stats(env)["stored"].get("telemetry", 0) - before["stored"].get("telemetry", 0) >= 50, 20, what="the other 50 messages stored")
    after = stats(env)
    assert after["malformed"].get("telemetry", 0) - before["malformed"].get("telemetry", 0) == 1
    assert after["db_errors"] == before["db_errors"] and after["db_rejected"] == before["db_rejected"]


def test_metric_labels_are_not_chosen_by_devices(env):
    """Finding 8: one device sending 2,000 version strings made 6,003 series."""
    for i in range(300):
        publish(env, state_topic("paris0"), {"device_id": "paris0", "online": True, "active": {"name": "digits", "version": f"6.6.{i}"}})
        publish(env, telemetry_topic("paris0"), batch("paris0", 20_000 + i, f"noise{i}@{i}"))
    wait_for(lambda: api(env["console"], "/api/v1/devices/paris0")["active"]["version"] == "6.6.299", 20, what="the last state stored")
    wait_for(lambda: stats(env)["stored"].get("telemetry", 0) >= 300, 20, what="telemetry stored")
    body = api(env["console"], "/metrics", raw=True)
    versions = set(re.findall(r'version="([^"]*)"', body))
    assert versions <= {"1.0.0", "2.0.0", "3.0.0", "(unpublished)", ""}, sorted(versions)[:10]
    assert 'edgeops_telemetry_inferences{bundle="(unpublished)",version="(unpublished)"}' in body


def test_the_device_clock_and_devices_outside_the_rollout_cannot_sway_its_gates(env):
    """Finding 4: one batch dated 10 years ahead from a device outside the rollout halted a good
    rollout (max_latency_regression 2.05e5); the console shows the device's clock skew."""
    for d in BERLIN:  # the cohort's baseline on the version it runs now
        env["devices"][d].telemetry(env["devices"][d].active, p95=4.0)
    current = env["devices"]["dev00"].active
    publish(env, telemetry_topic("paris0"), batch("paris0", 30_000, current, ts=time.time() + 10 * 365 * 86400, latency_p95_ms=0.01, inference_count=10**9))
    wait_for(lambda: api(env["console"], "/api/v1/devices/paris0")["clock"]["skewed_messages"] >= 1, 20, what="the skew counted")
    target = "digits@2.0.0" if current == "digits@1.0.0" else "digits@1.0.0"
    done = run_rollout(env, target, max_latency_regression=2.0)
    assert done["status"] == "finished", done
    clock = api(env["console"], "/api/v1/devices/paris0")["clock"]
    assert clock["skewed_messages"] == 1 and clock["last_skew_s"] > 9 * 365 * 86400


def test_huge_counts_cannot_wedge_a_rollout_or_the_metrics(env):
    """Finding 3: two valid-looking batches with inference_count 2^62 overflowed the gates' SUM:
    the reconciler failed every tick and /metrics lost the telemetry families."""
    current = env["devices"]["dev00"].active
    target = "digits@2.0.0" if current == "digits@1.0.0" else "digits@1.0.0"
    before = stats(env)
    for i, d in enumerate(BERLIN * 2):  # on the version the rollout brings, from devices it selects
        publish(env, telemetry_topic(d), batch(d, 40_000 + i, target, inference_count=2**62))
    wait_for(lambda: stats(env)["received"].get("telemetry", 0) - before["received"].get("telemetry", 0) >= 8, 20, what="the batches received")
    assert env["console"].ingest.flush(20)
    done = run_rollout(env, target, max_error_rate=0.01)
    assert done["status"] == "finished", done
    assert 'edgeops_telemetry_inferences{bundle="digits"' in api(env["console"], "/metrics", raw=True)
    assert stats(env)["malformed"].get("telemetry", 0) - before["malformed"].get("telemetry", 0) == 8  # refused at the door
