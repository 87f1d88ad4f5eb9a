"""`edgeops hil run NAME@VERSION --device ID --fleet URL` end to end, through the real CLI.

A private mosquitto, a real console (in-process: MQTT, ingest, TUF repository served over MQTT,
REST API, command signing) and a real agent (its own MQTT session, TUF client fetching over
MQTT, trusting the command key from its root.json, onnxruntime). The device first gets v1
through a rollout; then the CLI runs as a subprocess, as a CI job would, and its JUnit XML and
JSON are parsed:

- a good bundle passes with every check and the latency figures of ``--runs`` inferences;
- a bundle whose golden vectors the model does not reproduce exits 10 with the failing case;
- an unpublished bundle exits 9 with the console's 404 naming it;
- the device serves v1 throughout: a self-test never activates anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
import xml.etree.ElementTree as ET

import pytest
import sqlalchemy as sa

from edgeops.agent.config import parse_config
from edgeops.agent.core import Agent
from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole
from edgeops.fleet.registry import get_device, list_events, register_devices
from tests.agent.helpers import TrustFixture, agent_config_dict
from tests.support.broker import TestBroker
from tests.support.bundles import sample_inputs
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

TOKEN = "hil-token-" + uuid.uuid4().hex[:8]
DEVICE = "hil-pi-01"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Broker, console and one agent serving digits@1.0.0; digits@2.0.0 good, digits@2.1.0 with wrong golden vectors."""
    tmp = tmp_path_factory.mktemp("hil-device")
    tf = TrustFixture(tmp / "trust")
    tf.publish("1.0.0", 1)
    tf.v2 = tf.publish("2.0.0", 2)
    tf.publish("2.1.0", 3, golden_ok=False)
    broker = TestBroker().start()
    cfg = config_from_dict(
        {
            "broker": {"url": broker.url, "client_id": f"console-{uuid.uuid4().hex[:6]}"},
            "database": {"url": f"sqlite:///{tmp / 'fleet.db'}"},
            "repository": {"dir": str(tf.repo_dir), "keys_dir": str(tf.keys_dir)},
            "api": {"bind": "127.0.0.1:0", "tokens": [TOKEN], "tokens_env": None},
            "rollouts": {"reconcile_interval_s": 0.3},
            "ingest": {"flush_interval_s": 0.05},
            "base_dir": str(tmp),
        }
    )
    console = FleetConsole(cfg)
    console.db.create_all()
    register_devices(console.db, [{"id": DEVICE, "tags": {"lab": "hil"}}])
    console.start()
    # command_keys empty: the agent trusts the command key signed into its TUF root, as in the field
    agent_cfg = parse_config(agent_config_dict(tmp, tf, device_id=DEVICE, broker_url=broker.url, trust={"command_keys": []}))
    agent = Agent(agent_cfg).start()
    try:
        wait_for(lambda: get_device(console.db, DEVICE)["online"], 30, what="device online")
        api(console, "POST", "/api/v1/rollouts", {"bundle": "digits@1.0.0", "select": f"device={DEVICE}", "waves": "100%", "name": "v1"})
        rid = api(console, "GET", "/api/v1/rollouts")[0]["id"]
        api(console, "POST", f"/api/v1/rollouts/{rid}/start")
        wait_for(lambda: api(console, "GET", f"/api/v1/rollouts/{rid}")["status"] == "finished", 90, 0.3, "v1 rollout finished")
        wait_for(lambda: (get_device(console.db, DEVICE)["active"] or {}).get("version") == "1.0.0", 20, what="registry shows v1")
        yield {"console": console, "agent": agent, "tf": tf, "tmp": tmp}
    finally:
        agent.stop()
        console.stop()
        broker.stop()


def api(console, method, path, body=None):
    import urllib.request

    req = urllib.request.Request(console.api_url + path, method=method, data=json.dumps(body).encode() if body is not None else None, headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def hil(env, bundle, *extra):
    out = env["tmp"] / f"out-{uuid.uuid4().hex[:6]}"
    out.mkdir()
    cmd = [sys.executable, "-m", "edgeops.cli", "hil", "run", bundle, "--device", DEVICE, "--fleet", env["console"].api_url, "--token", TOKEN, "--junit", str(out / "hil.xml"), "--json", str(out / "hil.json"), "--wait", "120", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "COLUMNS": "200"})
    return proc, out


def junit(path):
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert int(suite.get("tests")) == len(cases) and int(root.get("failures")) == sum(1 for c in cases.values() if c.find("failure") is not None)
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    return root, suite, cases, props


def assert_serving_v1(env) -> None:
    agent = env["agent"]
    assert agent.serving is not None and agent.serving.manifest.version == "1.0.0"
    assert agent.persisted.state.value == "committed"
    _, model = agent.infer({"input": sample_inputs(1)})
    assert model.manifest.version == "1.0.0"
    wait_for(lambda: get_device(env["console"].db, DEVICE)["state"] == "committed", 10, what="registry state")
    assert get_device(env["console"].db, DEVICE)["active"]["version"] == "1.0.0"
    activated = [e for e in list_events(env["console"].db, device_id=DEVICE, kind="activated", limit=1000) if e["target"]["version"] != "1.0.0"]
    assert activated == [], "a self-test activated a version"


class Traffic:
    """Live inferences on the device while the CLI runs: which version answered each one."""

    def __init__(self, agent):
        self.agent, self.versions, self.errors = agent, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.versions.append(self.agent.infer({"input": sample_inputs(1)})[1].manifest.version)
            except Exception as e:  # noqa: BLE001 - any failure to serve is what this records
                self.errors.append(repr(e))
            self._stop.wait(0.01)

    def stop(self):
        self._stop.set()
        self._thread.join(5)


def test_good_bundle_passes_with_valid_junit(env):
    traffic = Traffic(env["agent"])
    try:
        proc, out = hil(env, "digits@2.0.0", "--runs", "40")
    finally:
        traffic.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # served throughout by the active version, without a failed request
    assert traffic.errors == [] and len(traffic.versions) > 10 and set(traffic.versions) == {"1.0.0"}
    assert f"ordered on {DEVICE}" in proc.stderr
    root, suite, cases, props = junit(out / "hil.xml")
    assert root.get("failures") == "0" and suite.get("name") == f"hil digits@2.0.0 on device:{DEVICE}"
    for name in ("bundle_integrity", "self_test.load", "self_test.errors", "self_test.golden", "self_test.latency_p95", "latency_p95_budget"):
        assert name in cases and cases[name].find("failure") is None, name
        assert cases[name].get("classname") == f"edgeops.hil.device.{DEVICE}"
    assert props["runs"] == "40" and props["timed_runs"] == "40" and props["device"] == DEVICE
    assert props["target_sha256"] == env["tf"].v2.sha256 and env["tf"].v2.sha256[:16] in cases["bundle_integrity"].find("system-out").text
    assert 0 < float(props["latency_p50_ms"]) <= float(props["latency_p95_ms"]) <= float(props["latency_p99_ms"])
    assert float(props["latency_budget_p95_ms"]) == 20.0 and props["profile"] == "x86_64-avx512-vnni" and float(props["load_s"]) > 0
    assert "cpu_mhz" in props and "temperature_c" in props and "memory_mb" in props

    doc = json.loads((out / "hil.json").read_text())
    assert doc["passed"] is True and doc["target"] == f"device:{DEVICE}" and doc["figures"]["runs"] == 40
    # the console recorded the order and stored the device's answer under its command id
    cid = doc["figures"]["command_id"]
    (answer,) = list_events(env["console"].db, device_id=DEVICE, command_id=cid)
    assert answer["kind"] == "self_test_passed" and answer["target"]["version"] == "2.0.0"
    c = env["console"].db.t.commands
    with env["console"].db.connect() as conn:
        assert conn.execute(sa.select(c.c.status, c.c.runs).where(c.c.command_id == cid)).one() == ("published", 40)
    assert_serving_v1(env)


def test_failing_golden_vectors_exit_10_with_the_failing_case(env):
    proc, out = hil(env, "digits@2.1.0", "--runs", "10")
    assert proc.returncode == 10, proc.stdout + proc.stderr
    assert "self_test.golden" in proc.stderr
    root, _, cases, props = junit(out / "hil.xml")
    assert int(root.get("failures")) >= 1
    failure = cases["self_test.golden"].find("failure")
    assert failure is not None and failure.get("type") == "HilCheckFailed" and "measured=3.0" in failure.text
    assert cases["bundle_integrity"].find("failure") is None  # verified fine; the model is what fails
    assert props["runs"] == "10"
    assert json.loads((out / "hil.json").read_text())["passed"] is False
    assert_serving_v1(env)


def test_unpublished_bundle_exits_9_naming_it(env):
    proc, out = hil(env, "digits@9.9.9")
    assert proc.returncode == 9, proc.stdout + proc.stderr
    assert "HTTP 404" in proc.stderr and "digits@9.9.9" in proc.stderr
    assert not (out / "hil.xml").exists()
