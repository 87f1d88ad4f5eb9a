"""Fault kinds on real agents, driven by signed commands (no console): crash, slow, offline.

The repository is served over MQTT by the agent tests' responder; commands are signed with
the repository's command key and published to each device's ``cmd`` topic.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid

import pytest

from edgeops.fleet.simulator.controller import Simulator
from edgeops.fleet.simulator.faults import parse_faults
from edgeops.fleet.simulator.settings import SimSettings
from tests.agent.helpers import RepoResponder, TrustFixture
from tests.support.broker import MOSQUITTO, TestBroker

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")]

FAULTS = "offline:0.25@digits=2.0.0,crash:0.3@digits=2.0.0,slow(x6):0.3@digits=2.*"
N = 16


@pytest.fixture(scope="module")
def tf(tmp_path_factory):
    t = TrustFixture(tmp_path_factory.mktemp("simtrust"))
    t.v1 = t.publish("1.0.0", 1)
    t.v2 = t.publish("2.0.0", 2)
    return t


def commander(port):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cmd-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    states: dict[str, dict] = {}
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        with lock:
            states[msg.topic.split("/")[2]] = json.loads(msg.payload)

    c.on_message = on_message
    c.on_connect = lambda cl, *a: cl.subscribe("edgeops/v1/+/state", 1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, states


def test_crash_slow_and_offline_faults_on_real_agents(tmp_path, tf):
    plan = parse_faults(FAULTS)
    with TestBroker() as broker:
        responder = RepoResponder(broker.url, tf.repo_dir)
        cmd, states = commander(broker.port)
        settings = SimSettings(broker_url=broker.url, root=str(tf.root_json), workdir=str(tmp_path / "sim"), devices=N, processes=1, threads=4, faults=FAULTS, rate=2.0)
        sim = Simulator(settings).start()
        try:
            sim.wait_connected(60)
            ids = sim.device_ids
            for d in ids:
                cmd.publish(f"edgeops/v1/{d}/cmd", tf.command("assign", tf.v1, device_id=d), qos=1)
            sim.wait(lambda s: s["states"] == {"committed": N}, 120, what="v1 committed everywhere")
            for d in ids:
                cmd.publish(f"edgeops/v1/{d}/cmd", tf.command("assign", tf.v2, device_id=d), qos=1)
            time.sleep(1.0)
            offline = {d for d in ids if plan.for_device(d).active("offline", "digits", "2.0.0")}
            def settled():
                xs = sim.devices()
                return all(x["offline_fault"] or x["state"] in ("committed", "failed") for x in xs) and sum(x["offline_fault"] for x in xs) == len(offline)

            deadline = time.monotonic() + 120
            while not settled():
                assert time.monotonic() < deadline, [(x["device_id"], x["state"], x["active"], x["offline_fault"], x["faults"]) for x in sim.devices()]
                time.sleep(0.5)
            devices = {x["device_id"]: x for x in sim.devices()}
            for d in ids:
                f = plan.for_device(d)
                x = devices[d]
                if d in offline:
                    assert x["offline_fault"] and not x["connected"], x
                elif f.active("crash", "digits", "2.0.0") or f.active("slow", "digits", "2.0.0"):
                    assert x["state"] == "failed" and x["active"] == "digits@1.0.0", x  # rolled back / never activated
                else:
                    assert x["state"] == "committed" and x["active"] == "digits@2.0.0", x
            # the broker published the last will of every device that went offline
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not all(states.get(d, {}).get("online") is False for d in offline):
                time.sleep(0.1)
            assert all(states[d]["online"] is False for d in offline)
            assert all(states[d]["online"] is True for d in set(ids) - offline)
            # the test is only meaningful when each fault hit someone
            kinds = {r.kind for d in ids for r in plan.for_device(d).rules}
            assert kinds == {"offline", "crash", "slow"}
        finally:
            sim.stop()
            cmd.loop_stop()
            responder.stop()


def test_cli_simulate_runs_and_reports_json(tmp_path, tf):
    with TestBroker() as broker:
        out = subprocess.run(
            [sys.executable, "-m", "edgeops.cli", "fleet", "simulate", "--devices", "3", "--broker", broker.url, "--root", str(tf.root_json), "--duration", "3", "--processes", "1", "--workdir", str(tmp_path / "w"), "--tags", "site=lab", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["devices"] == 3 and report["connected"] == 3 and report["states"] == {"idle": 3}
        assert report["device_ids"] == ["sim-00000", "sim-00002"]
        assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["sim-00000", "sim-00001", "sim-00002"]


def test_cli_refuses_a_bad_fault_spec_with_exit_code_3(tmp_path, tf):
    out = subprocess.run(
        [sys.executable, "-m", "edgeops.cli", "fleet", "simulate", "--broker", "mqtt://127.0.0.1:9", "--root", str(tf.root_json), "--faults", "nan:0.1,slow:fast"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 3 and "slow:fast" in out.stderr and "fraction 'fast'" in out.stderr
