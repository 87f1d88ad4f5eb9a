"""A simulated fleet of real agents through the real console, broker and CLI.

- a good version reaches 100% in four waves;
- a version that gives NaN on the devices (a simulator fault on live inputs: self-test passes,
  probation catches it) halts in the first wave, no device outside that wave ever starts it,
  and every device that took it is back on the old version.
"""

from __future__ import annotations

import uuid

import pytest

from edgeops.fleet.registry import get_device
from edgeops.fleet.simulator.faults import parse_faults
from tests.support.broker import MOSQUITTO
from tests.fleet.simulator.harness import cli, console_and_fleet
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")]

N = 20
TOKEN = "sim-token-" + uuid.uuid4().hex[:8]
FAULTS = "nan:1@digits=2.0.0"


@pytest.fixture
def env(tmp_path, fleet_repo):
    with console_and_fleet(tmp_path, fleet_repo["repo"], fleet_repo["keys"], TOKEN, 60, devices=N, threads=2, faults=FAULTS, rate=2.0, telemetry_interval_s=1.0) as (console, sim, _):
        yield {"console": console, "sim": sim, "api": ["--url", console.api_url, "--token", TOKEN]}


def run_to(api, rid, statuses, timeout=120):
    return wait_for(lambda: (lambda r: r if r["status"] in statuses else None)(cli("status", rid, *api, "--json")), timeout, 0.5, f"rollout {rid} in {statuses}")


def test_good_version_to_100_percent_then_nan_version_halts_in_wave_1(env):
    api, sim, console = env["api"], env["sim"], env["console"]

    # --- a good version reaches every device in four waves -------------------------------------
    # (min-reporting 1.0: each wave waits for every device's verdict, so "finished" means all)
    r = cli("create", "--bundle", "digits@1.0.0", "--select", "tag=site=berlin", "--waves", "10%,25%,50%,100%", "--min-reporting", "1.0", "--start", *api, "--json")
    done = run_to(api, r["id"], {"finished", "paused", "aborted"})
    assert done["status"] == "finished", done
    assert [w["devices"] for w in done["waves"]] == [2, 3, 5, 10] and done["succeeded"] == N, (done, cli("devices", r["id"], *api, "--json"), sim.devices())
    st = sim.stats()
    assert st["active"] == {"digits@1.0.0": N} and st["states"] == {"committed": N}
    assert st["rejected_messages"] == 0 and st["tick_errors"] == 0
    # devices whose command came before a timestamp.json fetch shared its answer (repocache), and the
    # process-wide verification memos stay off in the caller's own process (processes=0)
    assert st["repo_cache"]["shared"] > 0 and st["verify_memo"] == {}

    # --- digits 2.0.0 gives NaN on live inputs on these devices: halted in the first wave -------
    bad = cli("create", "--bundle", "digits@2.0.0", "--select", "tag=site=berlin", "--waves", "10%,50%,100%", "--max-failure-rate", "0.05", "--start", *api, "--json")
    halted = run_to(api, bad["id"], {"paused", "finished", "aborted"})
    assert halted["status"] == "paused", halted
    assert [w["status"] for w in halted["waves"]] == ["halted", "pending", "pending"]
    assigned = cli("devices", bad["id"], *api, "--json")
    wave0 = {a["device_id"] for a in assigned}
    assert len(wave0) == 2 and all(a["wave"] == 0 for a in assigned)

    devices = {d["device_id"]: d for d in sim.devices()}
    # only wave 0 ever started 2.0.0 (the agent keeps the last update it worked on)
    assert {d for d, x in devices.items() if x["update"] == "digits@2.0.0"} == wave0
    # those devices activated it, probation saw NaN, and they rolled back by themselves
    assert all(devices[d]["state"] == "failed" for d in wave0)
    assert all(x["active"] == "digits@1.0.0" for x in devices.values())
    assert all(x["faults"] == [FAULTS] for x in devices.values()) and parse_faults(FAULTS).for_device("sim-00000")
    wait_for(lambda: all(get_device(console.db, d)["active"]["version"] == "1.0.0" for d in wave0), 20, what="registry shows the rollback")
    events = console.db  # the console recorded why: a probation gate on NaN outputs
    import sqlalchemy as sa

    with events.connect() as conn:
        t = events.t.events
        kinds = {(row.device_id, row.kind) for row in conn.execute(sa.select(t.c.device_id, t.c.kind).where(t.c.target_version == "2.0.0"))}
        gates = [row.gates for row in conn.execute(sa.select(t.c.gates).where(t.c.kind == "probation_failed", t.c.target_version == "2.0.0"))]
    assert {d for d, k in kinds if k == "activated"} == wave0
    assert {d for d, k in kinds if k == "rolled_back"} == wave0
    assert gates and all("nan_outputs" in g for g in gates)
