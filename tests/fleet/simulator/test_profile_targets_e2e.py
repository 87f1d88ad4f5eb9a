"""ONE rollout of a version built for two hardware profiles, judged per profile: real agents of
the fleet simulator on two profiles, a real mosquitto, the real console, `edgeops publish` and
the rollout CLI (issue 18).

24 simulated devices run x86_64-avx512-vnni or x86_64-avx2 (half each), enrolled without a
profile: the console learns each one's from its state messages. ``digits`` is built for both
profiles at every version and each bundle published with `edgeops publish`: the first profile
of a version takes the plain target path, the other ``digits/V/PROFILE/digits-V.bundle``. A
rollout of ``digits@V`` then sends each device the target of its own profile (an agent refuses
a bundle built for another).

- 1.0.0 everywhere: one rollout (first installs);
- 2.0.0, a plain pass-through version: one judged rollout over both profiles finishes;
- 4.0.0, 30% slower only on avx2 (the fault spec makes every device take half its latency
  budget, except avx2 devices on 4.0.0, which take 0.65 of it): one judged rollout over both
  profiles halts in wave 1, and the failed judgement names the stratum
  ``latency_p95[profile=x86_64-avx2]`` while the avx512-vnni stratum passes.
"""

from __future__ import annotations

import shutil
import time
import uuid

import pytest
from click.testing import CliRunner

from edgeops.cli import cli as edgeops_cli
from edgeops.fleet.registry import get_device
from edgeops.trust.targets import profile_target_path, target_path
from tests.fleet.simulator.harness import cli, console_and_fleet
from tests.support.broker import MOSQUITTO
from tests.support.bundles import write_test_bundle
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")]

N = 24
VNNI, AVX2 = "x86_64-avx512-vnni", "x86_64-avx2"
SLOW = "4.0.0"
TOKEN = "pt-token-" + uuid.uuid4().hex[:8]
FAULTS = f"slow(x0.65):1@digits={SLOW}#profile={AVX2},slow(x0.5):1"
# As in test_profile_fault_e2e.py: two looks a second apart, a 1.1 bound, 3 devices a cohort at least.
JUDGE = ["--waves", "50%,100%", "--max-latency-regression", "1.1", "--judge-max-looks", "2", "--judge-look-interval", "1", "--judge-min-devices", "3", "--inconclusive-timeout", "60s"]


def publish(bundle, base) -> dict:
    """`edgeops publish BUNDLE --json` in-process."""
    import json

    res = CliRunner().invoke(edgeops_cli, ["publish", str(bundle), "--repo", str(base / "repo"), "--keys", str(base / "keys"), "--json"])
    assert res.exit_code == 0, (res.output, res.exception)
    return json.loads(res.output)


@pytest.fixture
def env(tmp_path, fleet_repo):
    base = tmp_path / "base"
    shutil.copytree(fleet_repo["base"], base)  # digits 1.0.0, 2.0.0 (and a NaN 3.0.0) built for avx512-vnni
    published = {}
    for version, release, profiles in (("1.0.0", 1, [AVX2]), ("2.0.0", 2, [AVX2]), (SLOW, 4, [VNNI, AVX2])):
        for profile in profiles:
            path = base / f"digits-{profile}-{version}.bundle"
            write_test_bundle(path, name="digits", version=version, release=release, profile=profile)
            published[(version, profile)] = publish(path, base)
    with console_and_fleet(tmp_path, base / "repo", base / "keys", TOKEN, 120, with_profile=False, devices=N, threads=4,
                           profiles={VNNI: 0.5, AVX2: 0.5}, faults=FAULTS, rate=2.0, telemetry_interval_s=1.0) as (console, sim, settings):
        yield {"console": console, "sim": sim, "settings": settings, "api": ["--url", console.api_url, "--token", TOKEN], "published": published, "base": base}


def run_to_end(env, rid, timeout=60):
    def check():
        env["console"].wake()
        r = cli("status", rid, *env["api"], "--json")
        return r if r["status"] in ("finished", "paused", "aborted") else None

    return wait_for(check, timeout, 0.4, f"rollout {rid} to end")


def test_one_rollout_per_version_over_two_profiles_finishes_plain_and_halts_the_slow_profile(env):
    api, sim, console, settings, published = env["api"], env["sim"], env["console"], env["settings"], env["published"]
    ids = settings.all_device_ids()
    by_profile = {p: [d for d in ids if settings.profile_of(d) == p] for p in (VNNI, AVX2)}
    assert sorted(map(len, by_profile.values())) == [12, 12], by_profile
    # the second profile of each version went to its own path; the first kept the plain one
    assert published[("2.0.0", AVX2)]["target"] == profile_target_path("digits", "2.0.0", AVX2)
    assert published[(SLOW, VNNI)]["target"] == target_path("digits", SLOW) and published[(SLOW, AVX2)]["target"] == profile_target_path("digits", SLOW, AVX2)
    # the same name@version@profile with other bytes is refused, naming it
    other = env["base"] / "other.bundle"
    write_test_bundle(other, name="digits", version=SLOW, release=4, profile=AVX2, seed=3)
    res = CliRunner().invoke(edgeops_cli, ["publish", str(other), "--repo", str(env["base"] / "repo"), "--keys", str(env["base"] / "keys")])
    assert res.exit_code != 0 and f"digits@{SLOW} for profile {AVX2} is already published" in str(res.exception), (res.output, res.exception)
    wait_for(lambda: all(get_device(console.db, d)["profile"] == settings.profile_of(d) for d in ids), 20, 0.2, "profiles learned from state")

    def rollout(version, *extra):
        rid = cli("create", "--bundle", f"digits@{version}", "--select", "tag=site=berlin", *extra, "--start", *api, "--json")["id"]
        return rid

    # 1.0.0: one rollout over both profiles (first installs)
    st = run_to_end(env, rollout("1.0.0", "--waves", "100%", "--min-reporting", "1.0"))
    assert st["status"] == "finished" and st["succeeded"] == N and st["excluded"]["devices"] == 0, st
    assert sorted(st["targets"]) == [AVX2, VNNI]
    assert sim.stats()["active"] == {"digits@1.0.0": N}

    # 2.0.0, plain: one judged rollout over both profiles finishes
    t0 = time.monotonic()
    plain_id = rollout("2.0.0", *JUDGE)
    plain = run_to_end(env, plain_id, 90)
    print(f"plain judged in {time.monotonic() - t0:.1f}s")
    assert plain["status"] == "finished" and plain["succeeded"] == N, plain
    devices = {a["device_id"]: a for a in cli("devices", plain_id, *api, "--json")}
    for p, ds in by_profile.items():
        assert {devices[d]["target"] for d in ds} == {plain["targets"][p]["name"]}
    assert plain["targets"][AVX2]["name"] == profile_target_path("digits", "2.0.0", AVX2) and plain["targets"][VNNI]["name"] == target_path("digits", "2.0.0")
    assert sim.stats()["active"] == {"digits@2.0.0": N}

    # 4.0.0, 30% slower on avx2 only: one judged rollout halts in wave 1 naming that stratum
    t0 = time.monotonic()
    slow_id = rollout(SLOW, *JUDGE)
    slow = run_to_end(env, slow_id, 90)
    print(f"slow judged in {time.monotonic() - t0:.1f}s")
    assert slow["status"] == "paused" and slow["reason"].startswith("wave 1 halted: max_latency_regression"), slow["reason"]
    assert f"latency_p95[profile={AVX2}]: fail" in slow["reason"], slow["reason"]
    gate = {g["gate"]: g for g in slow["waves"][0]["gates"]}["max_latency_regression"]
    judged = {j["metric"]: j for j in gate["judgement"]}
    stratum = judged[f"latency_p95[profile={AVX2}]"]
    assert stratum["outcome"] == "fail" and 1.2 < stratum["effect"] < 1.5 and (stratum["n_new"], stratum["n_control"]) == (6, 6), judged
    assert judged[f"latency_p95[profile={VNNI}]"]["outcome"] != "fail", judged
    assert slow["waves"][0]["devices"] == 12 and slow["waves"][1]["status"] == "pending"
    # wave 1 drew both profiles; each device runs its own profile's 4.0.0 bundle
    active = {x["device_id"]: x["active"] for x in sim.devices()}
    wave1 = {a["device_id"]: a["target"] for a in cli("devices", slow_id, *api, "--json")}
    for d, target in wave1.items():
        assert target == slow["targets"][settings.profile_of(d)]["name"] and active[d] == f"digits@{SLOW}", (d, target)
    assert sorted(settings.profile_of(d) for d in wave1) == [AVX2] * 6 + [VNNI] * 6
    # the human-readable status names each profile's target
    text = CliRunner().invoke(__import__("edgeops.fleet.cli", fromlist=["rollout"]).rollout, ["status", slow_id, *api])
    assert text.exit_code == 0 and f"target for {AVX2}: {profile_target_path('digits', SLOW, AVX2)}" in text.output, text.output
