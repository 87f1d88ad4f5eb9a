"""A rollout with no telemetry waits, then pauses as inconclusive (issue 18), end to end: real
agents in the fleet simulator, a real mosquitto, the real console and the rollout CLI.

The simulated devices report their state and events (they install 2.0.0 and say so) but send
no telemetry in the test's time (a one-hour telemetry interval: a fleet whose telemetry is off,
lost, or blocked by its network). The judged latency gate has nothing to compare, so the wave
must not pass on silence: it waits as ``inconclusive`` and, after ``--inconclusive-timeout``,
the rollout pauses naming the gate; the next wave is never assigned."""

from __future__ import annotations

import json
import uuid

import pytest

from edgeops.fleet.registry import get_device
from tests.fleet.simulator.harness import cli, console_and_fleet, run_to_end
from tests.support.broker import MOSQUITTO
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")]

N = 10
TOKEN = "silent-token-" + uuid.uuid4().hex[:8]


@pytest.fixture
def env(tmp_path, fleet_repo):
    with console_and_fleet(tmp_path, fleet_repo["repo"], fleet_repo["keys"], TOKEN, 120, devices=N, threads=2, rate=2.0,
                           telemetry_interval_s=3600.0) as (console, sim, settings):
        yield {"console": console, "sim": sim, "api": ["--url", console.api_url, "--token", TOKEN], "ids": settings.all_device_ids()}


def test_a_rollout_whose_devices_send_no_telemetry_waits_then_pauses_inconclusive(env):
    api = env["api"]
    # 1.0.0 everywhere first: a first install has no earlier version to regress from (that gate passes there)
    first = cli("create", "--bundle", "digits@1.0.0", "--select", "tag=site=berlin", "--waves", "100%", "--start", *api, "--json")
    assert run_to_end(env, first["id"], timeout=90)["status"] == "finished"
    r = cli("create", "--bundle", "digits@2.0.0", "--select", "tag=site=berlin", "--waves", "50%,100%", "--max-latency-regression", "1.1",
            "--judge-min-devices", "3", "--control-share", "0.3", "--inconclusive-timeout", "3s", "--start", *api, "--json")
    st = run_to_end(env, r["id"], timeout=90)
    assert st["status"] == "paused" and st["reason"].startswith("wave 1 inconclusive: max_latency_regression"), json.dumps(st["waves"], indent=1)[:3000]
    wave1 = st["waves"][0]
    gate = {g["gate"]: g for g in wave1["gates"]}["max_latency_regression"]
    assert gate["outcome"] == "inconclusive" and gate["detail"].startswith("0 of the wave's"), gate
    assert st["waves"][1]["status"] == "pending"
    # the wave's devices do install (their state and events come through, the pause holds only the
    # next wave): telemetry alone was missing
    done = wait_for(lambda: (lambda s: s if s["by_status"].get("succeeded", 0) == wave1["devices"] else None)(cli("status", r["id"], *api, "--json")),
                    60, 0.4, "wave 1's devices to commit 2.0.0")
    assert done["status"] == "paused" and done["waves"][1]["status"] == "pending"
    on_v2 = [d for d in env["ids"] if (get_device(env["console"].db, d)["active"] or {}).get("version") == "2.0.0"]
    assert len(on_v2) == wave1["devices"], on_v2  # nobody outside wave 1 got 2.0.0
