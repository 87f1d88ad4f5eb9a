"""POST /api/v1/devices/{id}/self-test and the events command_id filter, against a real broker.

The console runs in-process with its real MQTT client on a private mosquitto; a paho subscriber
on the devices' command topics receives what the console publishes, and the device side's own
verifier (signature, audience, expiry, seq) has to accept it. SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa

from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole
from edgeops.fleet.registry import list_events, register_devices
from edgeops.fleet.targets import find_target
from edgeops.protocol import MAX_SELF_TEST_RUNS, Command, cmd_topic
from edgeops.trust.commands import CommandVerifier, command_payload, verify_envelope
from edgeops.trust.keys import Keyring
from tests.fleet.conftest import PG_OK, PG_URL
from tests.fleet.helpers import event, state
from tests.support.wait import wait_for

TOKEN = "self-test-token-" + uuid.uuid4().hex[:6]
PROFILE = "x86_64-avx512-vnni"  # what tests.support.bundles builds for


def _config(tmp_path, fleet_repo, dialect, broker_url=None, ttl=600.0):
    db = {"url": f"sqlite:///{tmp_path / 'fleet.db'}"}
    if dialect == "postgresql":
        if not PG_OK:
            pytest.skip("PostgreSQL not reachable")
        db = {"url": PG_URL, "schema": f"edgeops_selftest_{uuid.uuid4().hex[:10]}"}
    raw = {
        "database": db,
        "repository": {"dir": str(fleet_repo["repo"]), "keys_dir": str(fleet_repo["keys"])},
        "api": {"bind": "127.0.0.1:0", "tokens": [TOKEN], "tokens_env": None},
        "rollouts": {"command_ttl_s": ttl},
        "ingest": {"flush_interval_s": 0.05},
        "base_dir": str(tmp_path),
    }
    if broker_url:
        raw["broker"] = {"url": broker_url, "client_id": f"console-{uuid.uuid4().hex[:8]}"}
    return config_from_dict(raw)


def _ingest(console, *messages) -> None:
    for topic, payload in messages:
        console.ingest.submit(topic, payload)
    assert console.ingest.flush(10)


@pytest.fixture(params=["sqlite", "postgresql"])
def console(request, tmp_path, fleet_repo, mqtt_broker):
    """A console on the module's broker with devices: on (online, reported seq 7), off (offline), arm (other profile)."""
    cfg = _config(tmp_path, fleet_repo, request.param, mqtt_broker.url)
    c = FleetConsole(cfg, reconcile=False)
    c.db.create_all()
    register_devices(c.db, [{"id": d, "tags": {"site": "lab"}} for d in ("on", "off", "arm")])
    c.start()
    wait_for(lambda: c.mqtt_connected, 10, what="console connected")
    _ingest(c, state("on", profile=PROFILE, last_command_seq=7), state("off", online=False, profile=PROFILE), state("arm", profile="rpi5-arm64"))
    yield c
    db = c.db
    c.stop()
    if request.param == "postgresql":
        db.drop_all()


def call(console, method, path, body=None, token=TOKEN, raw: bytes | None = None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(console.api_url + path, method=method, data=data, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class CommandTap:
    """A paho subscriber on every device's command topic (what the devices would receive)."""

    def __init__(self, broker):
        self.messages: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"tap-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *a: c.subscribe("edgeops/v1/+/cmd", qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "tap did not subscribe"

    def wait(self, n: int, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        wait_for(lambda: len(self.messages) >= n, timeout, 0.05, f"{n} command(s) on the broker")
        return self.messages

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def tap(mqtt_broker):
    t = CommandTap(mqtt_broker)
    yield t
    t.stop()


def command_keys(fleet_repo):
    return Keyring.load(fleet_repo["keys"]).public_keys("command")


# -- the order -------------------------------------------------------------------------------------
def test_command_is_signed_recorded_and_published(console, tap, fleet_repo, tmp_path):
    before = time.time()
    status, out = call(console, "POST", "/api/v1/devices/on/self-test", {"bundle": "digits@2.0.0", "runs": 25})
    assert status == 202, out
    assert out["device"] == "on" and out["bundle"] == "digits@2.0.0" and out["command_id"].startswith("selftest-on-")
    target = find_target(fleet_repo["repo"], "digits", "2.0.0")
    assert out["target"] == {"name": target.name, "sha256": target.sha256, "length": target.length}

    topic, envelope = tap.wait(1)[0]
    assert topic == cmd_topic("on")
    cmd = verify_envelope(envelope, command_keys(fleet_repo))  # signed by the console's command key
    assert cmd.kind == "self_test" and cmd.command_id == out["command_id"] and cmd.device_id == "on"
    assert (cmd.target_name, cmd.target_sha256, cmd.target_length) == (target.name, target.sha256, target.length)
    assert (cmd.bundle.name, cmd.bundle.version, cmd.bundle.sha256, cmd.bundle.release) == ("digits", "2.0.0", target.sha256, target.release)
    assert cmd.runs == 25
    # the device reported seq 7 as its last accepted command, so the console goes above it
    assert cmd.seq == out["seq"] == 8
    assert before + 600 - 5 <= cmd.expires <= time.time() + 600

    # the device's own verifier accepts it (audience, expiry, seq above what it accepted)
    verifier = CommandVerifier("on", command_keys(fleet_repo), tmp_path / "seq.json")
    (tmp_path / "seq.json").write_text(json.dumps({"format": 1, "device_id": "on", "seq": {"on": 7}}))
    assert verifier.verify(envelope).command_id == out["command_id"]

    # recorded, and the per-device counter moved: the next command goes above it, never reuses it
    db = console.db
    with db.connect() as conn:
        row = conn.execute(sa.select(db.t.commands).where(db.t.commands.c.command_id == out["command_id"])).one()._mapping
        cmd_seq = conn.execute(sa.select(db.t.devices.c.cmd_seq).where(db.t.devices.c.id == "on")).scalar()
    assert (row["device_id"], row["kind"], row["seq"], row["status"], row["runs"], row["bundle_name"], row["bundle_version"]) == ("on", "self_test", 8, "published", 25, "digits", "2.0.0")
    assert row["sent_at"] is not None and cmd_seq == 8
    status, again = call(console, "POST", "/api/v1/devices/on/self-test", {"bundle": "digits@1.0.0"})
    assert status == 202 and again["seq"] == 9 and again["command_id"] != out["command_id"]
    second = verify_envelope(tap.wait(2)[1][1], command_keys(fleet_repo))
    assert second.runs is None and second.target_name == find_target(fleet_repo["repo"], "digits", "1.0.0").name
    assert verifier.verify(tap.messages[1][1]).seq == 9
    # without runs the field is left out of the signed payload (agents before it accept it)
    assert "runs" not in json.loads(base64.b64decode(json.loads(tap.messages[1][1])["payload"]))


def test_token_required(console, tap):
    assert call(console, "POST", "/api/v1/devices/on/self-test", {"bundle": "digits@2.0.0"}, token=None)[0] == 401
    assert call(console, "POST", "/api/v1/devices/on/self-test", {"bundle": "digits@2.0.0"}, token="wrong")[0] == 401
    time.sleep(0.3)
    assert tap.messages == []


def test_unknown_device_is_404_naming_it(console, tap):
    status, out = call(console, "POST", "/api/v1/devices/ghost-7/self-test", {"bundle": "digits@2.0.0"})
    assert status == 404 and "ghost-7" in out["error"] and "not enrolled" in out["error"]


def test_unpublished_bundle_is_404_naming_it(console, tap):
    status, out = call(console, "POST", "/api/v1/devices/on/self-test", {"bundle": "digits@9.9.9"})
    assert status == 404 and "digits@9.9.9" in out["error"] and "digits@2.0.0" in out["error"]  # lists what is published
    status, out = call(console, "POST", "/api/v1/devices/on/self-test", {"bundle": "nosuch@1.0.0"})
    assert status == 404 and "nosuch@1.0.0" in out["error"]
    time.sleep(0.3)
    assert tap.messages == []


def test_offline_device_is_409(console, tap):
    status, out = call(console, "POST", "/api/v1/devices/off/self-test", {"bundle": "digits@2.0.0"})
    assert status == 409 and "device off is offline" in out["error"]
    with console.db.connect() as conn:
        assert conn.execute(sa.select(console.db.t.devices.c.cmd_seq).where(console.db.t.devices.c.id == "off")).scalar() == 0  # no seq spent


def test_bundle_for_another_profile_is_409(console, tap):
    status, out = call(console, "POST", "/api/v1/devices/arm/self-test", {"bundle": "digits@2.0.0"})
    assert status == 409 and PROFILE in out["error"] and "rpi5-arm64" in out["error"]


@pytest.mark.parametrize(
    "body, needle",
    [
        (b"{not json", "not JSON"),
        (b"[1]", "JSON object"),
        ({}, "bundle: required"),
        ({"bundle": "digits"}, "NAME@VERSION"),
        ({"bundle": 7}, "bundle"),
        ({"bundle": "digits@2.0.0", "runs": 0}, "runs"),
        ({"bundle": "digits@2.0.0", "runs": MAX_SELF_TEST_RUNS + 1}, str(MAX_SELF_TEST_RUNS)),
        ({"bundle": "digits@2.0.0", "runs": "5"}, "runs"),
        ({"bundle": "digits@2.0.0", "runs": True}, "runs"),
        ({"bundle": "digits@2.0.0", "runz": 5}, "runz"),
    ],
)
def test_bad_body_is_400_naming_the_field(console, body, needle):
    status, out = call(console, "POST", "/api/v1/devices/on/self-test", raw=body if isinstance(body, bytes) else json.dumps(body).encode())
    assert status == 400 and needle in out["error"], out


def test_queued_rollout_command_is_409(console, tap, fleet_repo):
    """A rollout command decided (seq taken) but not yet published must go out first."""
    from edgeops.fleet.rollouts import service
    from edgeops.fleet.rollouts.reconciler import Reconciler
    from edgeops.fleet.rollouts.settings import parse_request

    r = service.create_rollout(console.db, parse_request({"bundle": "digits@2.0.0", "select": "device=on", "waves": "100%"}), fleet_repo["repo"])
    service.start_rollout(console.db, r["id"])
    Reconciler(console.db, console.config.rollouts, sender=None, repo_dir=fleet_repo["repo"]).tick()  # assigns, publishes nothing
    status, out = call(console, "POST", "/api/v1/devices/on/self-test", {"bundle": "digits@2.0.0"})
    assert status == 409 and r["id"] in out["error"] and "not yet published" in out["error"]
    assert tap.messages == []
    # once the console's own reconciler has published the assignment, the self-test goes after it
    assert console.reconciler.publish_pending(r["id"]) == 1
    status, out = call(console, "POST", "/api/v1/devices/on/self-test", {"bundle": "digits@2.0.0"})
    assert status == 202, out
    sent = [verify_envelope(p, command_keys(fleet_repo)) for _, p in tap.wait(2)]
    assert [(c.kind, c.seq) for c in sent] == [("assign", 8), ("self_test", 9)]


def test_console_without_mqtt_is_503(tmp_path, fleet_repo):
    cfg = _config(tmp_path, fleet_repo, "sqlite")
    c = FleetConsole(cfg, mqtt=False, reconcile=False).start()
    try:
        register_devices(c.db, [{"id": "on"}])
        with c.db.begin() as conn:
            conn.execute(c.db.t.devices.update().values(online=True))
        status, out = call(c, "POST", "/api/v1/devices/on/self-test", {"bundle": "digits@2.0.0"})
        assert status == 503 and "MQTT" in out["error"]
        # the 404s do not need a broker
        assert call(c, "POST", "/api/v1/devices/nope/self-test", {"bundle": "digits@2.0.0"})[0] == 404
        assert call(c, "POST", "/api/v1/devices/on/self-test", {"bundle": "digits@0.0.1"})[0] == 404
    finally:
        c.stop()


# -- the answer ------------------------------------------------------------------------------------
def test_events_filter_by_command_id(console):
    _ingest(
        console,
        event("on", 1, "agent_started"),
        event("on", 2, "self_test_passed", command_id="selftest-on-a", target="digits@2.0.0", detail='{"latency_p99_ms": 1.5}'),
        event("on", 3, "command_rejected", command_id="selftest-on-b"),
        event("arm", 1, "command_rejected", command_id="selftest-on-a"),  # same id from another device
    )
    status, evs = call(console, "GET", "/api/v1/events?device=on&command_id=selftest-on-a")
    assert status == 200 and [(e["seq"], e["kind"], e["command_id"]) for e in evs] == [(2, "self_test_passed", "selftest-on-a")]
    assert evs[0]["target"] == {"name": "digits", "version": "2.0.0"} and json.loads(evs[0]["detail"]) == {"latency_p99_ms": 1.5}
    assert [e["seq"] for e in call(console, "GET", "/api/v1/events?device=on&command_id=selftest-on-b")[1]] == [3]
    assert sorted((e["device_id"], e["seq"]) for e in call(console, "GET", "/api/v1/events?command_id=selftest-on-a")[1]) == [("arm", 1), ("on", 2)]
    assert call(console, "GET", "/api/v1/events?device=on&command_id=nope")[1] == []
    assert len(call(console, "GET", "/api/v1/events?device=on")[1]) == 3
    assert [e["seq"] for e in list_events(console.db, device_id="on", command_id="selftest-on-b")] == [3]


def test_openapi_documents_the_endpoint(console):
    status, doc = call(console, "GET", "/openapi.json", token=None)
    op = doc["paths"]["/api/v1/devices/{id}/self-test"]["post"]
    assert {"202", "400", "401", "404", "409", "503"} <= set(op["responses"])
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/SelfTestRequest"
    req = doc["components"]["schemas"]["SelfTestRequest"]
    assert req["required"] == ["bundle"] and req["properties"]["runs"]["maximum"] == MAX_SELF_TEST_RUNS
    assert {"command_id", "device", "bundle"} <= set(doc["components"]["schemas"]["SelfTestOrder"]["required"])
    assert "command_id" in {p["name"] for p in doc["paths"]["/api/v1/events"]["get"]["parameters"]}


def test_runs_is_left_out_of_the_payload_when_unset():
    """Canonical payloads: commands that do not use ``runs`` sign the same bytes as before it existed."""
    base = dict(device_id="d", command_id="c", seq=1, expires=2e9, kind="self_test")
    assert "runs" not in json.loads(command_payload(Command(**base)))
    assert json.loads(command_payload(Command(**base, runs=5)))["runs"] == 5
    with pytest.raises(ValueError, match="runs"):  # the console never signs what devices refuse
        command_payload(Command(**base, runs=MAX_SELF_TEST_RUNS + 1))
