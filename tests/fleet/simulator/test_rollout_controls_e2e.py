"""Maintenance windows, channel promotion and the watch after the last wave, end to end (issue 18):
real agents in the fleet simulator (with a fault spec), a real mosquitto, the real console and
the rollout CLI through its REST API.

One fleet of 12 simulated devices, in order:

- a maintenance window on one device delays its assignment: the others install, it waits
  (pending, "waiting for its maintenance window", counted in status) and never sees the command
  until the window opens (the reconciler's clock is moved to the window's start), then installs;
- digits 2.0.0 is published to staging, then prod (prod requires staging, signed in the
  target): a rollout into prod before one finished in staging is refused (exit 9) naming why;
- after staging finished, the prod rollout runs with --watch; the fault spec
  ``offline:0.1@digits=2.0.0`` takes 2 devices off the network as they start 2.0.0 (their last
  will reaches the console), the wave passes without them (min_reporting 0.8), and while
  watching they time out: a late failure over max_failure_rate. Only those 2 are ordered back,
  with the reason on their assignments; the 10 others stay on 2.0.0 and the rollout pauses
  saying which devices and why.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid

import pytest

from edgeops.fleet.registry import get_device
from edgeops.fleet.simulator.faults import parse_faults
from edgeops.trust.keys import Keyring
from edgeops.trust.repository import Repository
from tests.support.broker import MOSQUITTO
from tests.fleet.simulator.harness import cli, console_and_fleet
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")]

N = 12
TOKEN = "ctl-token-" + uuid.uuid4().hex[:8]
FAULTS = "offline:0.1@digits=2.0.0"
WINDOWED = "sim-00005"


@pytest.fixture
def env(tmp_path, fleet_repo):
    base = tmp_path / "base"
    shutil.copytree(fleet_repo["base"], base)  # channels are published here, not in the session's repository
    ring = Keyring.load(base / "keys")
    repo = Repository(base / "repo")
    repo.publish(base / "digits-2.0.0.bundle", ring, channel="staging")
    repo.publish(base / "digits-2.0.0.bundle", ring, channel="prod")
    with console_and_fleet(tmp_path, base / "repo", base / "keys", TOKEN, 90, devices=N, threads=2, faults=FAULTS, rate=2.0, telemetry_interval_s=1.0) as (console, sim, settings):
        # the reconciler's clock, moved forward where the test must not wait for the wall clock
        offset = [0.0]
        console.reconciler.clock = lambda: time.time() + offset[0]
        yield {"console": console, "sim": sim, "api": ["--url", console.api_url, "--token", TOKEN], "offset": offset, "ids": settings.all_device_ids()}


def run_to(env, rid, statuses, timeout=90):
    def check():
        env["console"].wake()
        r = cli("status", rid, *env["api"], "--json")
        return r if r["status"] in statuses else None

    return wait_for(check, timeout, 0.4, f"rollout {rid} in {statuses}")


def test_window_delays_assignment_promotion_needs_staging_and_a_late_failure_rolls_back_only_its_devices(env):
    api, sim, console, offset, ids = env["api"], env["sim"], env["console"], env["offset"], env["ids"]

    # --- a maintenance window delays one device's assignment ------------------------------------
    opens = (int(time.time()) // 60 + 61) * 60  # a minute boundary about an hour ahead
    tm = time.gmtime(opens)
    window = f"device={WINDOWED};{tm.tm_min} {tm.tm_hour} * * *;10m;UTC"
    r = cli("create", "--bundle", "digits@1.0.0", "--select", "tag=site=berlin", "--waves", "100%", "--min-reporting", "1.0", "--maintenance", window, "--start", *api, "--json")
    rid = r["id"]
    st = wait_for(lambda: (lambda s: s if s["by_status"].get("succeeded") == N - 1 else None)(cli("status", rid, *api, "--json")), 60, 0.4, "every device but the windowed one committed 1.0.0")
    assert st["status"] == "running" and st["waves"][0]["waiting_for_window"] == 1, st
    held = {a["device_id"]: a for a in cli("devices", rid, *api, "--json")}[WINDOWED]
    assert held["status"] == "pending" and held["detail"].startswith("waiting for its maintenance window (next opens " + time.strftime("%Y-%m-%d %H:%M", tm)), held
    assert {x["device_id"]: x for x in sim.devices()}[WINDOWED]["update"] is None  # it never saw the command
    offset[0] = opens + 30 - time.time()  # the window opens
    done = run_to(env, rid, {"finished", "paused", "aborted"})
    assert done["status"] == "finished" and done["succeeded"] == N, done
    assert {x["device_id"]: x for x in sim.devices()}[WINDOWED]["active"] == "digits@1.0.0"
    offset[0] = 0.0  # back to the wall clock: the offline timeouts below run on it

    # --- promotion to prod without a rollout finished in staging is refused ---------------------
    # the real command line, for its exit code
    out = subprocess.run([sys.executable, "-m", "edgeops.cli", "rollout", "create", "--bundle", "digits@2.0.0", "--select", "tag=site=berlin", *api], capture_output=True, text=True, timeout=60)
    assert out.returncode == 9, out.stdout + out.stderr
    assert "promotion into channel prod refused: no rollout of this version finished in channel staging (finished in: none)" in out.stderr, out.stderr

    # --- staging, then prod with --watch: a late failure rolls back only the devices it hit -------
    offline = sorted(d for d in ids if parse_faults(FAULTS).for_device(d).active("offline", "digits", "2.0.0"))
    assert offline == ["sim-00002", "sim-00003"]  # the spec's deterministic draw: 2 of 12 (1 would stay within 0.1)
    staging = cli("create", "--bundle", "digits@2.0.0", "--select", "device=sim-00000+sim-00001", "--waves", "100%", "--channel", "staging", "--start", *api, "--json")
    assert run_to(env, staging["id"], {"finished", "paused", "aborted"})["status"] == "finished"
    prod = cli(
        "create", "--bundle", "digits@2.0.0", "--select", "tag=site=berlin", "--waves", "100%", "--min-reporting", "0.8", "--max-failure-rate", "0.1", "--watch", "10m", "--start", *api, "--json"
    )
    assert (prod["settings"]["channel"], prod["settings"]["requires_channel"]) == ("prod", "staging")
    pid = prod["id"]
    watching = run_to(env, pid, {"watching", "paused", "finished", "aborted"})
    assert watching["status"] == "watching", watching
    wait_for(lambda: not any(get_device(console.db, d)["online"] for d in offline), 30, 0.3, "the last wills of the devices the fault took offline")
    offset[0] = 120.0  # past offline_timeout_s (90): the two offline devices time out while watching
    paused = run_to(env, pid, {"paused", "finished", "aborted"})
    assert paused["status"] == "paused", paused
    reason = paused["reason"]
    assert reason.startswith("late failure during the watch: max_failure_rate 0.1667 vs 0.1 (2/12 failed)"), reason
    assert "ordered back: sim-00002, sim-00003" in reason and "the other 10 devices stay on 2.0.0" in reason, reason
    rows = {a["device_id"]: a for a in cli("devices", pid, *api, "--json")}
    assert {d for d, a in rows.items() if a["status"] == "reverting"} == set(offline)
    assert all(rows[d]["detail"].startswith("late failure during the watch") for d in offline)
    assert {d for d, a in rows.items() if a["status"] == "succeeded"} == set(ids) - set(offline)
    devices = {x["device_id"]: x for x in sim.devices()}
    assert all(devices[d]["active"] == "digits@2.0.0" for d in set(ids) - set(offline)), devices
    assert all(devices[d]["offline_fault"] for d in offline)
