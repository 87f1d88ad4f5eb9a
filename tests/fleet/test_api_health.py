"""/healthz follows the console's broker session: 503 with a reason while it is down (real mosquitto)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole
from tests.support.broker import TestBroker
from tests.support.wait import wait_for


def health(console) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(console.api_url + "/healthz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_healthz_fails_while_the_broker_session_is_down(tmp_path, fleet_repo):
    with TestBroker() as broker:
        cfg = config_from_dict(
            {
                "broker": {"url": broker.url, "client_id": "console-health", "keepalive_s": 5},
                "database": {"url": f"sqlite:///{tmp_path / 'fleet.db'}"},
                "repository": {"dir": str(fleet_repo["repo"]), "keys_dir": str(fleet_repo["keys"])},
                "api": {"bind": "127.0.0.1:0", "tokens": ["t"], "tokens_env": None},
                "base_dir": str(tmp_path),
            }
        )
        console = FleetConsole(cfg, reconcile=False).start()
        try:
            wait_for(lambda: console.mqtt_connected, 20, what="console connected")
            assert health(console) == (200, {"ok": True, "leader": False, "mqtt_connected": True})
            broker.kill()
            status, body = wait_for(lambda: (lambda h: h if h[0] != 200 else None)(health(console)), 30, what="/healthz to fail")
            assert status == 503 and body["ok"] is False and body["mqtt_connected"] is False
            assert "broker" in body["reason"]
            broker.start()  # same port: the console reconnects by itself and is healthy again
            wait_for(lambda: health(console)[0] == 200, 60, 0.2, "/healthz ok after the broker is back")
        finally:
            console.stop()


def test_console_without_mqtt_is_healthy(tmp_path, fleet_repo):
    """A console started without MQTT (tools, tests) has no broker session to lose."""
    cfg = config_from_dict({"database": {"url": f"sqlite:///{tmp_path / 'fleet.db'}"}, "repository": {"dir": str(fleet_repo["repo"])}, "api": {"bind": "127.0.0.1:0", "tokens_env": None}, "base_dir": str(tmp_path)})
    console = FleetConsole(cfg, mqtt=False, reconcile=False).start()
    try:
        assert health(console)[0] == 200
    finally:
        console.stop()
