"""End to end against a real mosquitto: console + scripted paho devices + the real CLI.

- a good version reaches 100% in waves;
- a regressing version (NaN on the devices that take it) halts in the first wave: no device
  outside that wave is ever assigned, and every device that took it is back on the old version;
- on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest
from click.testing import CliRunner

from edgeops.fleet.cli import fleet, rollout
from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole
from edgeops.fleet.registry import get_device, register_devices
from edgeops.trust.keys import Keyring
from tests.fleet.conftest import PG_OK, PG_URL
from tests.fleet.scripted_device import ScriptedDevice, SharedTrust
from tests.support.broker import MOSQUITTO, TestBroker
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")]

TOKEN = "test-token-" + uuid.uuid4().hex[:8]
N = 20


def console_config(tmp_path, fleet_repo, broker_url, dialect, **rollouts):
    db = {"url": f"sqlite:///{tmp_path / 'fleet.db'}"}
    if dialect == "postgresql":
        if not PG_OK:
            pytest.skip("PostgreSQL not reachable")
        db = {"url": PG_URL, "schema": f"edgeops_e2e_{uuid.uuid4().hex[:10]}"}
    return config_from_dict(
        {
            "broker": {"url": broker_url, "client_id": f"console-{uuid.uuid4().hex[:6]}"},
            "database": db,
            "repository": {"dir": str(fleet_repo["repo"]), "keys_dir": str(fleet_repo["keys"])},
            "api": {"bind": "127.0.0.1:0", "tokens": [TOKEN]},
            "rollouts": {"reconcile_interval_s": 0.3, "offline_timeout_s": 60, **rollouts},
            "ingest": {"flush_interval_s": 0.05},
            "base_dir": str(tmp_path),
        }
    )


def cli(group, *args):
    res = CliRunner().invoke(group, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output) if "--json" in args else res.output


@pytest.fixture(params=["sqlite", "postgresql"])
def fleet_env(request, tmp_path, fleet_repo):
    """A mosquitto, a console, and N scripted devices on digits@1.0.0 (digits@3.0.0 gives NaN)."""
    broker = TestBroker().start()
    cfg = console_config(tmp_path, fleet_repo, broker.url, request.param)
    console = FleetConsole(cfg)
    console.db.create_all()
    register_devices(console.db, [{"id": f"dev{i:02d}", "tags": {"site": "berlin"}, "profile": "x86"} for i in range(N)])
    register_devices(console.db, [{"id": "paris0", "tags": {"site": "paris"}}])
    console.start()
    keys = Keyring.load(fleet_repo["keys"]).public_keys("command")
    trust = SharedTrust(fleet_repo["repo"], tmp_path / "trust-cache")
    devices = [ScriptedDevice(f"dev{i:02d}", broker.port, keys, trust, tmp_path, {"digits@3.0.0": "nan"}).start() for i in range(N)]
    devices.append(ScriptedDevice("paris0", broker.port, keys, trust, tmp_path).start())
    wait_for(lambda: all(get_device(console.db, d.device_id)["online"] for d in devices), 30, what="devices online")
    env = {"console": console, "devices": devices, "broker": broker, "api": ["--url", console.api_url, "--token", TOKEN]}
    yield env
    for d in devices:
        d.stop()
    console.stop()
    if request.param == "postgresql":
        from edgeops.fleet.db import Database

        Database(cfg.database_url(), schema=cfg.database.schema_name).drop_all()
    broker.stop()


def run_to(api, rid, statuses, timeout=60):
    return wait_for(lambda: (lambda r: r if r["status"] in statuses else None)(cli(rollout, "status", rid, *api, "--json")), timeout, 0.3, f"rollout {rid} in {statuses}")


def test_good_then_regressing_rollout(fleet_env):
    api, devices = fleet_env["api"], fleet_env["devices"]
    berlin = [d for d in devices if d.device_id.startswith("dev")]
    listed = cli(fleet, "devices", *api, "--json")
    assert len(listed) == N + 1 and all(d["online"] and d["active"]["version"] == "1.0.0" for d in listed)

    # --- a good version reaches 100% in waves -------------------------------------------------
    r = cli(rollout, "create", "--bundle", "digits@2.0.0", "--select", "tag=site=berlin", "--waves", "10%,50%,100%", "--start", *api, "--json")
    done = run_to(api, r["id"], {"finished", "paused", "aborted"})
    assert done["status"] == "finished", done
    assert [w["devices"] for w in done["waves"]] == [2, 8, 10] and done["succeeded"] == N
    assert all(d.active == "digits@2.0.0" and len(d.received) == 1 for d in berlin)
    assert devices[-1].received == [] and devices[-1].active == "digits@1.0.0"  # not selected
    wait_for(lambda: all(get_device(fleet_env["console"].db, d.device_id)["active"]["version"] == "2.0.0" for d in berlin), 20, what="registry shows 2.0.0")
    assert [x["id"] for x in cli(rollout, "list", *api, "--json")] == [r["id"]]

    # --- a regressing version halts in the first wave --------------------------------------------
    bad = cli(rollout, "create", "--bundle", "digits@3.0.0", "--select", "tag=site=berlin", "--waves", "10%,50%,100%", "--max-failure-rate", "0.05", "--start", *api, "--json")
    halted = run_to(api, bad["id"], {"paused", "finished", "aborted"})
    assert halted["status"] == "paused" and "wave 1 halted" in halted["reason"] and "max_failure_rate" in halted["reason"]
    assert [w["status"] for w in halted["waves"]] == ["halted", "pending", "pending"]
    assigned = cli(rollout, "devices", bad["id"], *api, "--json")
    wave0 = {a["device_id"] for a in assigned}
    assert len(wave0) == 2 and all(a["wave"] == 0 and a["status"] == "rolled_back" for a in assigned)
    # no device outside that wave was ever sent digits@3.0.0
    got_bad = {d.device_id for d in devices if any(c.bundle and c.bundle.version == "3.0.0" for c in d.received)}
    assert got_bad == wave0
    # every device that took it is back on the old version, on the device and in the registry
    assert all(d.active == "digits@2.0.0" for d in berlin)
    wait_for(lambda: all(get_device(fleet_env["console"].db, d)["active"]["version"] == "2.0.0" for d in wave0), 20, what="registry shows rollback")
    scrape = urllib.request.Request(fleet_env["console"].api_url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})  # /metrics needs the token by default
    metrics = urllib.request.urlopen(scrape).read().decode()
    assert f'edgeops_rollout_gate_passing{{gate="max_failure_rate",rollout="{bad["id"]}",wave="0"}} 0.0' in metrics
    assert 'edgeops_devices_online_by_version{bundle="digits",version="2.0.0"} 20.0' in metrics

    # --- abort: the devices already rolled back need no order; the rollout ends aborted ----------
    aborted = cli(rollout, "abort", bad["id"], *api, "--json")
    assert aborted["status"] in ("aborting", "aborted")
    final = run_to(api, bad["id"], {"aborted"})
    assert [w["status"] for w in final["waves"]] == ["failed", "cancelled", "cancelled"]
    res = CliRunner().invoke(rollout, ["resume", bad["id"], *api])
    assert res.exit_code != 0 and "cannot resume while aborted" in str(res.exception)
