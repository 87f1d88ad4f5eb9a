"""Data capture end to end with real parts (issue 17): the console orders a signed capture
policy, a real agent (onnxruntime, SQLite spool) captures, seals and uploads samples in chunks
over a real mosquitto with passwords and the fleet's ACL; an eavesdropper logged in as the
console's own broker user sees only ciphertext; the broker is SIGKILLed mid-upload and
restarted, and every sample ends up stored exactly once."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

from edgeops.agent.config import parse_config
from edgeops.agent.core import Agent
from edgeops.agent.statefile import State
from edgeops.fleet.capture import public_key_b64
from edgeops.fleet.capture_store import SampleFilter, list_samples, read_sample
from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole
from edgeops.fleet.enroll import PasswordFile, acl_text
from edgeops.fleet.registry import register_devices
from tests.agent.helpers import TrustFixture, agent_config_dict
from tests.fleet.test_api import TOKEN, call
from tests.support.broker import MOSQUITTO, TestBroker
from tests.support.bundles import sample_inputs
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto (passwords, ACL and a broker to kill)")]
CONSOLE_USER, CONSOLE_PW = "edgeops-console", "console-" + uuid.uuid4().hex[:8]
DEVICE, DEVICE_PW = "cam-1", "device-" + uuid.uuid4().hex[:8]


class Eavesdropper:
    """A paho client logged in as the console's broker user, keeping every raw payload."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt

        self.payloads: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"eve-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(CONSOLE_USER, CONSOLE_PW)
        self.client.on_connect = lambda c, *a: c.subscribe("edgeops/v1/#", qos=1)
        self.client.on_message = lambda c, u, m: self.payloads.append((m.topic, bytes(m.payload)))
        self.client.reconnect_delay_set(0.2, 1.0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_capture_sealed_end_to_end_and_resumed_after_a_broker_kill(tmp_path):
    tf = TrustFixture(tmp_path / "trust")
    pub = tf.publish("1.0.0", 1)
    pw = PasswordFile(tmp_path / "passwd")
    pw.set(CONSOLE_USER, CONSOLE_PW)
    pw.set(DEVICE, DEVICE_PW)
    pw.save()
    (tmp_path / "acl").write_text(acl_text(CONSOLE_USER))
    extra = f"password_file {tmp_path / 'passwd'}\nacl_file {tmp_path / 'acl'}\n" + ("user root\n" if os.geteuid() == 0 else "")
    broker = TestBroker(extra_config=extra, allow_anonymous=False).start()
    cfg = config_from_dict({
        "database": {"url": f"sqlite:///{tmp_path / 'fleet.db'}"},
        "repository": {"dir": str(tf.repo_dir), "keys_dir": str(tf.keys_dir)},
        "broker": {"url": broker.url, "username": CONSOLE_USER, "password": CONSOLE_PW, "client_id": CONSOLE_USER},
        "ingest": {"flush_interval_s": 0.05},
        "api": {"bind": "127.0.0.1:0", "tokens": [TOKEN], "tokens_env": None},
        "base_dir": str(tmp_path),
    })
    console = FleetConsole(cfg, reconcile=False)
    console.db.create_all()
    register_devices(console.db, [{"id": DEVICE, "tags": {"site": "south"}}])
    console.start()
    eve = Eavesdropper(broker.port)
    agent = None
    try:
        wait_for(lambda: console.mqtt_connected, 10, what="console connected")
        acfg = agent_config_dict(tmp_path, tf, device_id=DEVICE, broker_url=broker.url, capture={"resend_after_s": 2.0})
        acfg["broker"].update(username=DEVICE, password=DEVICE_PW)
        agent = Agent(parse_config(acfg)).start()
        agent.uploader.chunk_bytes = 700  # several chunks per sample, so the kill can fall inside one
        agent.submit(tf.command("assign", pub, device_id=DEVICE))
        wait_for(lambda: agent.persisted.state is State.COMMITTED, 60, what="v1 committed on the agent")

        # the operator orders capture for the cohort site=south through the REST API; the console
        # signs one command per device with its key, its capture key in the policy
        key = console.capture.private_key
        status, sent = call(console, "POST", "/api/v1/capture", {"tags": {"site": "south"}, "random_share": 1.0, "budget_bytes_per_day": 8 << 20, "duration_s": 600})
        assert status == 202 and list(sent["devices"]) == [DEVICE] and sent["devices"][DEVICE]["acknowledged"]
        assert sent["policy"]["public_key"] == public_key_b64(key)
        wait_for(lambda: agent.capturer.active() is not None, 15, what="the policy taken by the agent")

        x = sample_inputs(40 * 8, seed=21).reshape(40, 8, 16)  # 40 samples of 8 rows each
        for batch in x[:20]:
            agent.infer({"input": batch})
        wait_for(lambda: console.capture.counts["stored"] >= 3, 30, what="the first samples stored")
        broker.kill()  # mid-upload: the uploads in flight lose chunks, acks or both
        for batch in x[20:]:
            agent.infer({"input": batch})  # captured while the broker is down: spooled
        assert agent.capture_spool.count() > 0
        broker.start()
        wait_for(lambda: agent.capture_spool.count() == 0, 90, what="every sample uploaded and acknowledged after the broker came back")

        rows = list_samples(console.db, SampleFilter(device=DEVICE))
        assert len(rows) == 40 == len({r["sample_id"] for r in rows}) == agent.capturer.total_captured
        served = {b.tobytes() for b in x}
        stored = [read_sample(console.capture.folder, key, r["sample_id"])["in/input"] for r in rows]
        assert {s.tobytes() for s in stored} == served  # none lost, none twice
        assert all(r["trigger"] == "random" and r["model_version"] == "1.0.0" for r in rows)
        assert not any(console.capture.partial.glob("*/*/*"))  # no partial upload left behind

        # the eavesdropper (the console's broker user) saw the chunks, never the inputs
        chunks = [p for t, p in eve.payloads if t.endswith("/capture")]
        assert len(chunks) >= 40 * 2
        raw = b"".join(p for _, p in eve.payloads)
        for b in x:
            for row in b:
                assert row.tobytes() not in raw and row[:4].tobytes() not in raw
        np.testing.assert_array_equal(np.sort(np.concatenate(stored).ravel()), np.sort(x.ravel()))
    finally:
        eve.stop()
        if agent is not None:
            agent.stop()
        console.stop()
        broker.stop()

