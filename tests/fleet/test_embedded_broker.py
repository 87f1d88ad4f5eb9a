"""The console on the embedded amqtt broker (MQTT 3.1.1): protocol fallback, ingest, fetch, a rollout."""

from __future__ import annotations

import uuid

import pytest

from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole, wait_for
from edgeops.fleet.embedded_broker import EmbeddedBroker
from edgeops.fleet.registry import get_device, register_devices
from edgeops.fleet.rollouts import service
from edgeops.fleet.rollouts.settings import parse_request
from edgeops.trust.keys import Keyring
from tests.fleet.scripted_device import ScriptedDevice, SharedTrust


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
