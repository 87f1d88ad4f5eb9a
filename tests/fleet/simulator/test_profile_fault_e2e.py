"""A fleet of two hardware profiles in one simulator run, a fault scoped to one profile, and the
judge deciding on it: real agents, a real mosquitto, the real console and the rollout CLI (issue 18).

24 simulated devices, each running x86_64-avx512-vnni or x86_64-avx2 (``SimSettings.profiles``,
drawn from the device number), enrolled without a profile: the console learns each one's from
its state messages. An agent installs only bundles built for its own profile, and a rollout
delivers one signed target (``NAME@VERSION``, one profile), so the mixed fleet gets one bundle
per profile: ``digits`` for avx512-vnni, ``digits-avx2`` for avx2, both at 1.0.0 and 2.0.0, each
rolled out to its profile's devices (``--select profile=...``), as a user of this console would.

The fault spec makes every device take half its latency budget on every version, except the
avx2 devices on 2.0.0, which take 0.65 of it: 30% slower on that profile only, within every
self-test and probation bound (``slow(x0.65):1@*=2.0.0#profile=x86_64-avx2,slow(x0.5):1``).
The judged latency gate (control cohort on 1.0.0 over the same minutes) halts the avx2
rollout in wave 1, naming the regression; the avx512 rollout of the pass-through 2.0.0 finishes.
"""

from __future__ import annotations

import shutil
import time
import uuid

import pytest

from edgeops.fleet.registry import get_device
from edgeops.fleet.simulator.faults import parse_faults
from edgeops.trust.keys import Keyring
from edgeops.trust.repository import Repository
from tests.support.broker import MOSQUITTO
from tests.support.bundles import write_test_bundle
from tests.fleet.simulator.harness import cli, console_and_fleet, run_to_end
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")]

N = 24
VNNI, AVX2 = "x86_64-avx512-vnni", "x86_64-avx2"
BUNDLE = {VNNI: "digits", AVX2: "digits-avx2"}
TOKEN = "pf-token-" + uuid.uuid4().hex[:8]
FAULTS = f"slow(x0.65):1@*=2.0.0#profile={AVX2},slow(x0.5):1"
# Decide within seconds: two looks a second apart, a 1.1 bound. 12 devices a profile: wave 1 is
# 6 new vs 6 control; the last wave holds back --judge-min-devices (3) as its control, so it
# judges 3 new vs 3 control (the default 5 would need 15 devices a profile).
JUDGE = ["--waves", "50%,100%", "--max-latency-regression", "1.1", "--judge-max-looks", "2", "--judge-look-interval", "1", "--judge-min-devices", "3", "--inconclusive-timeout", "60s"]


@pytest.fixture
def env(tmp_path, fleet_repo):
    base = tmp_path / "base"
    shutil.copytree(fleet_repo["base"], base)
    ring = Keyring.load(base / "keys")
    repo = Repository(base / "repo")
    for version, release in (("1.0.0", 1), ("2.0.0", 2)):  # the same model built for the avx2 profile
        path = base / f"digits-avx2-{version}.bundle"
        write_test_bundle(path, name=BUNDLE[AVX2], version=version, release=release, profile=AVX2)
        repo.publish(path, ring)
    # enrolled without a profile: the console learns each device's from its state messages
    with console_and_fleet(tmp_path, base / "repo", base / "keys", TOKEN, 120, with_profile=False, devices=N, threads=4,
                           profiles={VNNI: 0.5, AVX2: 0.5}, faults=FAULTS, rate=2.0, telemetry_interval_s=1.0) as (console, sim, settings):
        yield {"console": console, "sim": sim, "settings": settings, "api": ["--url", console.api_url, "--token", TOKEN]}


def test_a_version_30_percent_slower_only_on_one_profile_halts_while_the_other_finishes(env):
    api, sim, console, settings = env["api"], env["sim"], env["console"], env["settings"]
    ids = settings.all_device_ids()
    by_profile = {p: [d for d in ids if settings.profile_of(d) == p] for p in (VNNI, AVX2)}
    assert sorted(map(len, by_profile.values())) == [12, 12], by_profile  # the draw splits 24 devices evenly
    # the console learned every device's profile from the device itself
    wait_for(lambda: all(get_device(console.db, d)["profile"] == settings.profile_of(d) for d in ids), 20, 0.2, "profiles learned from state")
    plan = parse_faults(FAULTS)
    assert all(plan.for_device(d, AVX2).active("slow", BUNDLE[AVX2], "2.0.0").factor == 0.65 for d in by_profile[AVX2])
    assert all(plan.for_device(d, VNNI).active("slow", BUNDLE[VNNI], "2.0.0").factor == 0.5 for d in by_profile[VNNI])

    # 1.0.0 everywhere: one rollout per profile's bundle (first installs: nothing to judge)
    first = [cli("create", "--bundle", f"{BUNDLE[p]}@1.0.0", "--select", f"profile={p}", "--waves", "100%", "--min-reporting", "1.0", "--start", *api, "--json")["id"] for p in (VNNI, AVX2)]
    for rid in first:
        st = run_to_end(env, rid)
        assert st["status"] == "finished" and st["succeeded"] == 12, st
    assert sim.stats()["active"] == {"digits@1.0.0": 12, "digits-avx2@1.0.0": 12}

    # 2.0.0 on both profiles at once, judged against each profile's devices still on 1.0.0. The judge
    # halts an unchanged version in up to --judge-alpha of waves by design (a false alarm: on a loaded
    # CI host the per-device p95 of a few seconds' inferences is noisy, and one such halt was seen), so
    # the avx512 rollout, whose point is that it finishes, is judged at alpha 0.01: 1 in 100 at most
    rids = {p: cli("create", "--bundle", f"{BUNDLE[p]}@2.0.0", "--select", f"profile={p}", *JUDGE, *(["--judge-alpha", "0.01"] if p == VNNI else []),
                   "--start", *api, "--json")["id"] for p in (VNNI, AVX2)}
    t0 = time.monotonic()
    slow = run_to_end(env, rids[AVX2], 90)
    plain = run_to_end(env, rids[VNNI], 90)
    print(f"judged in {time.monotonic() - t0:.1f}s")
    assert slow["status"] == "paused" and slow["reason"].startswith("wave 1 halted: max_latency_regression"), slow["reason"]
    gate = {g["gate"]: g for g in slow["waves"][0]["gates"]}["max_latency_regression"]
    judged = {j["metric"]: j for j in gate["judgement"]}
    # 0.65 / 0.5 of the budget slept, plus the same small overhead on both versions: about 1.3
    assert judged["latency_p95"]["outcome"] == "fail" and 1.2 < judged["latency_p95"]["effect"] < 1.5, judged
    assert (judged["latency_p95"]["n_new"], judged["latency_p95"]["n_control"]) == (6, 6)
    assert slow["waves"][1]["status"] == "pending" and slow["waves"][0]["devices"] == 6
    assert plain["status"] == "finished" and plain["succeeded"] == 12, (plain.get("reason"), plain)  # the reason first: pytest cuts the dict
    active = {x["device_id"]: x["active"] for x in sim.devices()}
    assert all(active[d] == "digits@2.0.0" for d in by_profile[VNNI])
    # the halted wave's devices keep 2.0.0 (paused, not aborted); the rest of avx2 stays on 1.0.0
    assert sorted(active[d] for d in by_profile[AVX2]) == ["digits-avx2@1.0.0"] * 6 + ["digits-avx2@2.0.0"] * 6
