"""The console on the embedded amqtt broker (MQTT 3.1.1): protocol fallback, ingest, fetch, a rollout."""

from __future__ import annotations

import uuid

import pytest

from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole
from edgeops.fleet.embedded_broker import EmbeddedBroker
from edgeops.fleet.registry import get_device, register_devices
from edgeops.fleet.rollouts import service
from edgeops.fleet.rollouts.settings import parse_request
from edgeops.trust.keys import Keyring
from tests.fleet.scripted_device import ScriptedDevice, SharedTrust
from tests.support.wait import wait_for


@pytest.mark.slow
def test_console_on_mqtt311_broker(tmp_path, fleet_repo):
    with EmbeddedBroker() as broker:
        cfg = config_from_dict(
            {
                "broker": {"url": broker.url, "client_id": f"c-{uuid.uuid4().hex[:6]}"},
                "database": {"url": f"sqlite:///{tmp_path / 'f.db'}"},
                "repository": {"dir": str(fleet_repo["repo"]), "keys_dir": str(fleet_repo["keys"])},
                "api": {"bind": "127.0.0.1:0", "tokens": ["t"]},
                "rollouts": {"reconcile_interval_s": 0.2},
                "ingest": {"flush_interval_s": 0.05},
            }
        )
        console = FleetConsole(cfg)
        console.db.create_all()
        register_devices(console.db, [{"id": f"m{i}"} for i in range(3)])
        console.start()
        assert console.mqtt.protocol == "3.1.1"
        keys = Keyring.load(fleet_repo["keys"]).public_keys("command")
        trust = SharedTrust(fleet_repo["repo"], tmp_path / "trust")
        devices = [ScriptedDevice(f"m{i}", broker.port, keys, trust, tmp_path, protocol="3.1.1").start() for i in range(3)]
        try:
            wait_for(lambda: all(get_device(console.db, d.device_id)["online"] for d in devices), 20, what="online")
            r = service.create_rollout(console.db, parse_request({"bundle": "digits@2.0.0", "waves": "100%"}), fleet_repo["repo"])
            service.start_rollout(console.db, r["id"])
            console.wake()
            done = wait_for(lambda: (s := service.rollout_status(console.db, r["id"]))["status"] in ("finished", "paused") and s, 30, 0.2, "rollout done")
            assert done["status"] == "finished" and done["succeeded"] == 3
            assert all(d.active == "digits@2.0.0" for d in devices)  # each fetched its bundle through the console
            assert console.repo_server.stats["served"] >= 3
        finally:
            for d in devices:
                d.stop()
            console.stop()


def test_snapshot_dict_iterates_a_snapshot():
    from edgeops.fleet.embedded_broker import SnapshotDict

    d = SnapshotDict({"a": 1, "b": 2})
    for key in d:  # a plain dict raises "dictionary changed size during iteration" here
        d[key + "x"] = 0
    for _key, _value in d.items():
        d["late"] = 1
    assert set(d) == {"a", "b", "ax", "bx", "late"}


@pytest.mark.slow
def test_concurrent_connects_with_retained_state_drop_no_client():
    """Devices coming online together while retained state exists (the demo's start-up).

    amqtt 0.12 walks its subscription table with awaits inside on every connect; without
    SnapshotDict, concurrent subscribes made that walk raise and the broker dropped the
    connecting client (33 of 60 here before the fix).
    """
    import threading
    import time

    import paho.mqtt.client as mqtt

    def client(cid):
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311)

    dropped: list[str] = []
    clients = []
    with EmbeddedBroker() as broker:
        console = client("console")
        console.connect("127.0.0.1", broker.port)
        console.loop_start()
        console.subscribe("state/#", 1)
        for i in range(30):
            console.publish(f"state/d{i}", "online", qos=1, retain=True).wait_for_publish(5)

        def come_online(n):
            for i in range(15):
                c = client(f"dev-{n}-{i}")
                c.on_disconnect = lambda cl, *_: dropped.append(cl._client_id)
                c.connect("127.0.0.1", broker.port)
                c.loop_start()
                for t in range(5):
                    c.subscribe(f"dev/{n}-{i}/{t}", 1)
                clients.append(c)

        threads = [threading.Thread(target=come_online, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        time.sleep(3)  # a dropped client's disconnect callback arrives within this
        try:
            assert dropped == []
        finally:
            for c in clients + [console]:
                c.loop_stop()
