"""`edgeops fleet serve` killed (SIGKILL) mid-rollout and restarted: it resumes from the database.

Devices keep working while the console is down; their events wait in the broker (the console's
persistent session). After the restart the rollout finishes, every device was assigned exactly
once, and none was forgotten.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from edgeops.fleet.cli import rollout
from edgeops.fleet.config import load_config, render_toml
from edgeops.fleet.db import Database
from edgeops.fleet.registry import get_device, register_devices
from edgeops.trust.keys import Keyring
from tests.fleet.conftest import PG_OK, PG_URL
from tests.fleet.scripted_device import ScriptedDevice, SharedTrust
from tests.support.broker import MOSQUITTO, TestBroker, free_port
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")]

N = 12
TOKEN = "restart-" + uuid.uuid4().hex[:8]


def serve(config_path, log):
    return subprocess.Popen([sys.executable, "-m", "edgeops.cli", "fleet", "serve", "--config", str(config_path)], stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def status(api, rid):
    res = CliRunner().invoke(rollout, ["status", rid, *api, "--json"])
    return json.loads(res.output) if res.exit_code == 0 else None


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_console_killed_mid_rollout_resumes(tmp_path, fleet_repo, dialect):
    db_section = {"url": f"sqlite:///{tmp_path / 'fleet.db'}"}
    if dialect == "postgresql":
        if not PG_OK:
            pytest.skip("PostgreSQL not reachable")
        db_section = {"url": PG_URL, "schema": f"edgeops_restart_{uuid.uuid4().hex[:10]}"}
    port = free_port()
    with TestBroker() as broker:
        cfg_path = tmp_path / "fleet.toml"
        cfg_path.write_text(
            render_toml(
                {
                    "broker": {"url": broker.url, "client_id": "console-restart"},
                    "database": db_section,
                    "repository": {"dir": str(fleet_repo["repo"]), "keys_dir": str(fleet_repo["keys"])},
                    "api": {"bind": f"127.0.0.1:{port}", "tokens": [TOKEN]},
                    "rollouts": {"reconcile_interval_s": 0.3},
                    "ingest": {"flush_interval_s": 0.05},
                }
            )
        )
        cfg = load_config(cfg_path)
        db = Database.from_config(cfg)
        db.create_all()
        register_devices(db, [{"id": f"dev{i:02d}", "tags": {"site": "berlin"}} for i in range(N)])
        keys = Keyring.load(fleet_repo["keys"]).public_keys("command")
        trust = SharedTrust(fleet_repo["repo"], tmp_path / "trust")
        devices = [ScriptedDevice(f"dev{i:02d}", broker.port, keys, trust, tmp_path).start() for i in range(N)]
        api = ["--url", f"http://127.0.0.1:{port}", "--token", TOKEN]
        log = open(tmp_path / "console.log", "ab")
        proc = serve(cfg_path, log)
        try:
            wait_for(lambda: status(api, "none") is None and CliRunner().invoke(rollout, ["list", *api, "--json"]).exit_code == 0, 30, 0.3, "console API up")
            res = CliRunner().invoke(rollout, ["create", "--bundle", "digits@2.0.0", "--waves", "25%,50%,100%", "--bake", "3s", "--start", *api, "--json"])
            assert res.exit_code == 0, res.output
            rid = json.loads(res.output)["id"]
            wait_for(lambda: (s := status(api, rid)) and s["current_wave"] == 1 and s["waves"][1]["devices"] > 0, 30, 0.2, "wave 1 started")

            proc.send_signal(signal.SIGKILL)  # a crash: no clean shutdown, nothing flushed
            proc.wait(10)
            with db.connect() as conn:
                mid = {r.device_id: (r.command_id, r.seq) for r in conn.execute(sa.select(db.t.assignments).where(db.t.assignments.c.rollout_id == rid))}
            assert 0 < len(mid) < N

            proc = serve(cfg_path, log)
            final = wait_for(lambda: (s := status(api, rid)) and s["status"] in ("finished", "paused", "aborted") and s, 180, 0.3, "rollout finished after restart")  # 60 s timed out once under full-suite load (PostgreSQL, 2 cores)
            assert final["status"] == "finished", final
            assert final["succeeded"] == N and [w["devices"] for w in final["waves"]] == [3, 3, 6]
            with db.connect() as conn:
                after = {r.device_id: (r.command_id, r.seq) for r in conn.execute(sa.select(db.t.assignments).where(db.t.assignments.c.rollout_id == rid))}
            assert {d: after[d] for d in mid} == mid  # decided before the crash: unchanged
            for d in devices:  # nobody assigned twice, nobody forgotten
                assert [c.kind for c in d.received] == ["assign"] and d.active == "digits@2.0.0" and d.rejected == []
            wait_for(lambda: all(get_device(db, d.device_id)["active"]["version"] == "2.0.0" for d in devices), 20, what="registry up to date")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            for d in devices:
                d.stop()
            log.close()
            if dialect == "postgresql":
                db.drop_all()
            db.dispose()
