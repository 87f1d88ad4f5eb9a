"""Schemathesis against a real console (real broker, SQLite and PostgreSQL): no 5xx, every response as documented.

Every check schemathesis has runs except ``positive_data_acceptance``: whether a schema-valid
rollout or self-test order is accepted depends on state the document cannot express (the bundle
must be published, waves must grow to 100 %, the device must be online), so the console refuses
such requests with 400/404/409/422 on purpose. Bounded: 10 examples per operation and phase with
a fixed seed (10-20 s per database on two cores); a run that finds a failure prints its
report, with a curl line per failure.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole
from edgeops.fleet.registry import get_device, register_devices
from tests.fleet.conftest import PG_OK, PG_URL
from tests.fleet.helpers import state
from tests.support.broker import TestBroker
from tests.support.wait import wait_for

TOKEN = "fuzz-token"
SEED = 20261204
MAX_EXAMPLES = 10


def online_device(port: int, device_id: str):
    """A paho client that reports ``device_id`` online with digits@2.0.0 active."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
    client.connect("127.0.0.1", port)
    client.loop_start()
    topic, payload = state(device_id, active="digits@2.0.0")
    client.publish(topic, payload, qos=1).wait_for_publish(10)
    return client


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_schemathesis_finds_no_server_error_or_schema_violation(tmp_path, fleet_repo, dialect):
    import uuid

    db = {"url": f"sqlite:///{tmp_path / 'fleet.db'}"}
    if dialect == "postgresql":
        if not PG_OK:
            pytest.skip("PostgreSQL not reachable")
        db = {"url": PG_URL, "schema": f"edgeops_fuzz_{uuid.uuid4().hex[:10]}"}
    with TestBroker() as broker:
        cfg = config_from_dict(
            {
                "broker": {"url": broker.url, "client_id": f"console-fuzz-{uuid.uuid4().hex[:6]}"},
                "database": db,
                "repository": {"dir": str(fleet_repo["repo"]), "keys_dir": str(fleet_repo["keys"])},
                "api": {"bind": "127.0.0.1:0", "tokens": [TOKEN], "tokens_env": None},
                "base_dir": str(tmp_path),
            }
        )
        console = FleetConsole(cfg).start()
        device = None
        try:
            register_devices(console.db, [{"id": f"d{i}", "tags": {"site": "x"}} for i in range(3)])
            wait_for(lambda: console.mqtt_connected, 20, what="console connected to the broker")
            device = online_device(broker.port, "d0")  # self-test orders to d0 are signed and published
            wait_for(lambda: get_device(console.db, "d0")["online"], 20, what="d0 online")
            cmd = [
                sys.executable, "-m", "schemathesis.cli", "run", console.api_url + "/openapi.json",
                "--header", f"Authorization: Bearer {TOKEN}",
                "--checks", "all", "--exclude-checks", "positive_data_acceptance",
                "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1",
                "--generation-database", "none", "--request-timeout", "20", "--no-color",
                "--report", "junit", "--report-dir", str(tmp_path / "report"),
            ]  # fmt: skip
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
        finally:
            database = console.db
            console.stop()
            if device is not None:
                device.loop_stop()
                device.disconnect()
            if dialect == "postgresql":
                database.drop_all()
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-3000:]
    assert "passed" in run.stdout and " failed" not in run.stdout.split("SUMMARY")[-1]
