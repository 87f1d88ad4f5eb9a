"""The judge end to end: a real console (SQLite), a real mosquitto and scripted devices of two
profiles that report telemetry as they run (issue 18).

- a version 30% slower only on profile arm halts in wave 1 with that stratum named (pooled, the
  typical device would be within the 10% bound), and after an abort every device is back;
- the same version without the slowdown finishes on every device (the control held back joins
  the last wave once it is judged);
- a rollout whose control reports no telemetry waits (inconclusive is not pass) and then pauses
  with the reason.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid

import pytest

from edgeops.fleet.config import config_from_dict
from edgeops.fleet.console import FleetConsole
from edgeops.fleet.registry import register_devices
from edgeops.fleet.rollouts import service
from edgeops.fleet.rollouts.settings import parse_request
from edgeops.trust.keys import Keyring
from tests.fleet.scripted_device import ScriptedDevice, SharedTrust
from tests.support.broker import MOSQUITTO, TestBroker
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")]

X86 = [f"x86-{i:02d}" for i in range(20)]
ARM = [f"arm-{i:02d}" for i in range(12)]
V1, V2 = "digits@1.0.0", "digits@2.0.0"
# two looks, one a second apart at the least: the test does not wait minutes for the default spacing
# control_share 0.25: 8 of the 32 devices held back for the last wave, so a control device that
# is slow to report under load (CI) does not leave it below judge_min_devices (5)
JUDGE = {"waves": "50%,100%", "max_latency_regression": 1.1, "judge_max_looks": 2, "judge_look_interval": 1, "control_share": 0.25}


def jitter(device_id: str) -> float:
    """Devices differ by up to 4% (load, thermal state), the same on every version."""
    return 1 + 0.04 * (int(hashlib.sha256(device_id.encode()).hexdigest()[:4], 16) / 0xFFFF * 2 - 1)


@pytest.fixture(scope="module")
def env(tmp_path_factory, fleet_repo):
    tmp = tmp_path_factory.mktemp("judge-e2e")
    broker = TestBroker().start()
    cfg = config_from_dict(
        {
            "broker": {"url": broker.url, "client_id": f"console-{uuid.uuid4().hex[:6]}"},
            "database": {"url": f"sqlite:///{tmp / 'fleet.db'}"},
            "repository": {"dir": str(fleet_repo["repo"]), "keys_dir": str(fleet_repo["keys"])},
            "api": {"bind": "127.0.0.1:0", "tokens": ["t-" + uuid.uuid4().hex[:8]]},
            "rollouts": {"reconcile_interval_s": 0.3, "offline_timeout_s": 120},
            "ingest": {"flush_interval_s": 0.05},
            "base_dir": str(tmp),
        }
    )
    console = FleetConsole(cfg)
    console.db.create_all()
    register_devices(console.db, [{"id": d, "tags": {"site": "berlin"}, "profile": "x86"} for d in X86] + [{"id": d, "tags": {"site": "berlin"}, "profile": "arm"} for d in ARM])
    console.start()
    keys = Keyring.load(fleet_repo["keys"]).public_keys("command")
    trust = SharedTrust(fleet_repo["repo"], tmp / "trust-cache")
    devices = {}
    for d in X86 + ARM:
        base = 4.0 * jitter(d)
        devices[d] = ScriptedDevice(d, broker.port, keys, trust, tmp, profile="arm" if d in ARM else "x86", latency={V1: base, V2: base}).start()
    wait_for(lambda: service.list_rollouts(console.db) == [] and _online(console, devices), 60, 0.2, "devices online")
    yield {"console": console, "devices": devices}
    for dev in devices.values():
        dev.stop()
    console.stop()
    broker.stop()


def _online(console, devices) -> bool:
    from edgeops.fleet.registry import list_devices

    rows = {d["id"]: d for d in list_devices(console.db)}
    return all(rows.get(d, {}).get("online") for d in devices)


class Reporter:
    """Every device sends a telemetry batch on its active version every ``every`` seconds."""

    def __init__(self, devices, every: float = 0.5):
        self.devices, self.every = devices, every
        self.stop_ = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_.wait(self.every):
            for dev in self.devices.values():
                dev.telemetry(dev.active)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_.set()
        self.thread.join(10)


def run(env, timeout: float = 90, **body) -> dict:
    db = env["console"].db
    r = service.create_rollout(db, parse_request({"bundle": V2, "select": "tag=site=berlin", **JUDGE, **body}), env["console"].repo_dir)
    service.start_rollout(db, r["id"])
    env["console"].wake()

    def ended():
        s = service.rollout_status(db, r["id"])
        return s if s["status"] in ("finished", "paused", "aborted") else None

    try:
        return wait_for(ended, timeout, 0.3, f"rollout {r['id']} to end")
    except AssertionError as e:
        raise AssertionError(f"{e}: {json.dumps(service.rollout_status(db, r['id']), indent=1)[:6000]}") from None


def back_to_v1(env, rollout_id: str) -> None:
    db = env["console"].db
    service.abort_rollout(db, rollout_id, actor="test")
    env["console"].wake()
    wait_for(lambda: all(d.active == V1 for d in env["devices"].values()), 60, 0.3, "every device back on v1")
    wait_for(lambda: service.rollout_status(db, rollout_id)["status"] == "aborted", 30, 0.3, "the rollout aborted")


def test_control_silent_waits_then_pauses_as_inconclusive(env):
    """Only the wave's devices report (once, as they install): the control says nothing, so the
    latency gate cannot decide; the wave waits, then the rollout pauses naming why."""
    st = run(env, inconclusive_timeout="3s")
    gate = {g["gate"]: g for g in st["waves"][0]["gates"]}["max_latency_regression"]
    assert st["status"] == "paused" and st["reason"].startswith("wave 1 inconclusive: max_latency_regression"), st["reason"]
    assert gate["outcome"] == "inconclusive" and "0 control" in gate["detail"], gate
    assert st["waves"][1]["status"] == "pending" and st["waves"][0]["devices"] == 16
    back_to_v1(env, st["id"])


def test_a_version_slower_only_on_arm_halts_wave_1_naming_the_stratum(env):
    for d in ARM:
        env["devices"][d].latency[V2] = 4.0 * jitter(d) * 1.3
    try:
        with Reporter(env["devices"]):
            st = run(env)
    finally:
        for d in ARM:
            env["devices"][d].latency[V2] = 4.0 * jitter(d)
    assert st["status"] == "paused" and st["reason"].startswith("wave 1 halted: max_latency_regression"), st["reason"]
    assert "latency_p95[profile=arm]: fail" in st["reason"], st["reason"]
    judged = {j["metric"]: j for j in {g["gate"]: g for g in st["waves"][0]["gates"]}["max_latency_regression"]["judgement"]}
    assert judged["latency_p95"]["outcome"] == "pass" and judged["latency_p95[profile=x86]"]["outcome"] == "pass"
    # the Hodges-Lehmann ratio of jittered devices, not exactly the 1.3 applied: past the bound, near 1.3
    assert 1.15 < judged["latency_p95[profile=arm]"]["effect"] < 1.5
    assert (judged["latency_p95[profile=arm]"]["n_new"], judged["latency_p95[profile=arm]"]["n_control"]) == (6, 6)
    back_to_v1(env, st["id"])


def test_the_same_version_without_the_slowdown_finishes(env):
    with Reporter(env["devices"]):
        st = run(env)
    assert st["status"] == "finished", st["reason"]
    assert st["succeeded"] == len(X86) + len(ARM) and all(d.active == V2 for d in env["devices"].values())
    assert [w["devices"] for w in st["waves"]] == [16, 16]  # the last wave's 8 plus the 8 held back as its control
