"""One rollout of a version published for several hardware profiles (issue 18): each device gets
the target built for the profile it reported, a profile without one is excluded with the reason,
a selection no device of which can get a target is refused at creation.

Resolution itself is tested on its own first; then the service and reconciler on SQLite and
PostgreSQL with real signatures (the broker replaced by a recorder, as in test_rollouts.py).
"""

from __future__ import annotations

import shutil

import pytest

from edgeops.fleet.rollouts import service
from edgeops.fleet.rollouts.resolution import NoMatchingTargetError, ProfileTarget, RolloutTargets, check_selection, exclusions
from edgeops.fleet.targets import find_targets
from edgeops.trust.keys import Keyring
from edgeops.trust.repository import Repository
from tests.fleet.test_rollouts import Harness
from tests.support.bundles import write_test_bundle

VNNI, AVX2, NEON = "x86_64-avx512-vnni", "x86_64-avx2", "aarch64-neon"


def _t(profile: str, name: str) -> ProfileTarget:
    return ProfileTarget(profile, name, "a" * 64, 10, 2)


TWO = RolloutTargets("digits@2.0.0", {VNNI: _t(VNNI, "digits/2.0.0/digits-2.0.0.bundle"), AVX2: _t(AVX2, f"digits/2.0.0/{AVX2}/digits-2.0.0.bundle")})


def test_each_profile_resolves_to_its_own_target():
    assert TWO.resolve(VNNI).name == "digits/2.0.0/digits-2.0.0.bundle"
    assert TWO.resolve(AVX2).name == f"digits/2.0.0/{AVX2}/digits-2.0.0.bundle"
    assert TWO.primary().profile == VNNI  # the plain path's, stored in the rollout row's own columns
    assert RolloutTargets.from_json(TWO.to_json()) == TWO


def test_a_profile_without_a_target_is_excluded_with_the_reason():
    assert TWO.resolve(NEON) is None and TWO.resolve(None) is None
    assert TWO.why_excluded(NEON) == (
        f"no target of digits@2.0.0 built for profile {NEON} (published for: {AVX2}, {VNNI}); publish a bundle of this version built for {NEON} to include it"
    )
    assert TWO.why_excluded(None).startswith("no profile reported yet")
    ex = exclusions(TWO, [("n1", NEON), ("v1", VNNI), ("n0", NEON), ("u1", None), ("a1", AVX2)])
    assert ex["devices"] == 3
    assert ex["by_profile"][NEON]["devices"] == 2 and ex["by_profile"][NEON]["sample"] == ["n0", "n1"]
    assert ex["by_profile"]["-"]["devices"] == 1 and "no profile reported yet" in ex["by_profile"]["-"]["reason"]


def test_a_version_with_one_target_serves_every_device_as_before():
    one = RolloutTargets("digits@2.0.0", {VNNI: _t(VNNI, "digits/2.0.0/digits-2.0.0.bundle")})
    assert one.resolve(NEON) is one.resolve(None) is one.resolve(VNNI)
    assert one.serves_any and not TWO.serves_any
    assert exclusions(one, [("n1", NEON)])["devices"] == 0
    check_selection(one, [NEON])  # the agent refuses a foreign bundle itself, as before
    legacy = RolloutTargets.single("digits@2.0.0", "digits/2.0.0/digits-2.0.0.bundle", "b" * 64, 10, 2)
    assert legacy.resolve(AVX2).name == "digits/2.0.0/digits-2.0.0.bundle" and legacy.to_dict()["*"]["sha256"] == "b" * 64


def test_a_selection_that_cannot_get_a_target_is_refused_naming_both_sides():
    with pytest.raises(NoMatchingTargetError) as e:
        check_selection(TWO, [NEON, NEON, None])
    assert str(e.value).startswith(f"digits@2.0.0: no selected device can run it: the selection's devices run profile(s) - (1 devices), {NEON} (2 devices); "
                                   f"the version is published for profile(s) {AVX2}, {VNNI}")
    check_selection(TWO, [NEON, AVX2])  # one device can: the others are excluded, not refused
    check_selection(TWO, [])  # an empty selection: devices may enrol later
    check_selection(TWO, [None])  # none has reported yet: they join once they do


# ---------------------------------------------------------------------------- service + reconciler
@pytest.fixture
def two_profile_repo(fleet_repo, tmp_path):
    """The fleet repository (digits 1.0.0-3.0.0 for vnni) plus digits 1.0.0 and 2.0.0 built for avx2."""
    base = tmp_path / "repo-base"
    shutil.copytree(fleet_repo["base"], base)
    ring, repo = Keyring.load(base / "keys"), Repository(base / "repo")
    for version, release in (("1.0.0", 1), ("2.0.0", 2)):
        path = base / f"digits-avx2-{version}.bundle"
        write_test_bundle(path, name="digits", version=version, release=release, profile=AVX2, seed=5)
        repo.publish(path, ring)
    return {"base": base, "keys": base / "keys", "repo": base / "repo"}


@pytest.fixture
def h2(db, two_profile_repo):
    from edgeops.fleet.registry import register_devices
    from tests.fleet.helpers import state

    harness = Harness(db, two_profile_repo, n=0)
    devices = [(f"v{i}", VNNI) for i in range(4)] + [(f"a{i}", AVX2) for i in range(4)] + [("n0", NEON), ("n1", NEON), ("u0", None)]
    register_devices(db, [{"id": d, "tags": {"site": "berlin"}, **({"profile": p} if p else {})} for d, p in devices])
    harness.feed(*[state(d, active="digits@1.0.0", **({"profile": p} if p else {})) for d, p in devices])
    yield harness
    harness.close()


def test_one_rollout_gives_each_profile_its_target_and_excludes_the_rest(h2):
    targets = find_targets(h2.repo, "digits", "2.0.0")
    assert sorted(targets) == [AVX2, VNNI]
    r = h2.create(waves="50%,100%", select="tag=site=berlin")
    assert {p: t["name"] for p, t in r["targets"].items()} == {VNNI: targets[VNNI].name, AVX2: targets[AVX2].name}
    assert r["excluded"]["devices"] == 3 and sorted(r["excluded"]["by_profile"]) == ["-", NEON]
    assert r["excluded"]["by_profile"][NEON]["sample"] == ["n0", "n1"] and "no target of digits@2.0.0 built for profile aarch64-neon" in r["excluded"]["by_profile"][NEON]["reason"]
    service.start_rollout(h2.db, r["id"])
    h2.rec.tick()
    first = h2.pub.commands(h2.keys)
    # wave 1: half of the 8 devices it can reach, drawn from both profiles
    assert len(first) == 4 and sorted(c.device_id[0] for c in first) == ["a", "a", "v", "v"]
    # a restarted console publishes what was decided, to the same targets
    h2.rec = h2.make_reconciler()
    for _ in range(8):
        h2.rec.tick()
        h2.respond()
        st = service.rollout_status(h2.db, r["id"])
        if st["status"] == "finished":
            break
    assert st["status"] == "finished" and st["succeeded"] == 8, st
    cmds = h2.pub.commands(h2.keys)
    assert {c.device_id for c in cmds} == {f"v{i}" for i in range(4)} | {f"a{i}" for i in range(4)}  # never n0, n1, u0
    for c in cmds:
        t = targets[VNNI if c.device_id.startswith("v") else AVX2]
        assert (c.target_name, c.target_sha256, c.target_length, c.bundle.release) == (t.name, t.sha256, t.length, t.release)
    assert {d: a["target"] for d, a in h2.assignments(r["id"]).items()} == {c.device_id: c.target_name for c in cmds}


def test_a_selection_of_profiles_without_a_target_is_refused_at_creation(h2):
    with pytest.raises(NoMatchingTargetError, match=rf"run profile\(s\) {NEON} \(2 devices\); the version is published for profile\(s\) {AVX2}, {VNNI}"):
        h2.create(select=f"profile={NEON}")
    # a version published for one profile is delivered as before (the agent decides)
    assert h2.create(bundle="digits@3.0.0", select=f"profile={NEON}")["excluded"]["devices"] == 0


def test_the_control_holds_only_profiles_the_rollout_can_deliver_to(h2):
    r = h2.create(waves="50%,100%", select="tag=site=berlin", max_latency_regression=1.2)
    service.start_rollout(h2.db, r["id"])
    h2.rec.tick()
    from edgeops.fleet.rollouts import queries
    from edgeops.fleet.rollouts.inputs import WaveSource, cohorts

    with h2.db.connect() as conn:
        rollout = queries.load_rollout(h2.db, conn, r["id"])
        wave = queries.load_wave(h2.db, conn, r["id"], 0)
        src = WaveSource(h2.db, conn, rollout, wave, h2.now, h2.now, h2.rec._targets)
        cohorts(src)  # the control's provider, as the reconciler calls it
    old_versions, members = src.memo["selection"][1]
    assert old_versions == ["1.0.0", "3.0.0"]
    assert members == {f"v{i}" for i in range(4)} | {f"a{i}" for i in range(4)}  # never n0, n1 (no target for their profile), u0 (none reported)


def test_the_console_form_offers_the_judge_and_the_page_names_each_profiles_target(h2):
    from edgeops.fleet.rollouts.settings import parse_request
    from edgeops.fleet.ui import pages
    from edgeops.fleet.ui.routes import form_to_request

    form = {"bundle": "digits@2.0.0", "waves": "50%,100%", "max_latency_regression": "1.1", "max_drift": "alert", "strata_tag": "site", "control_share": "0.2",
            "judge_alpha": "0.01", "judge_max_looks": "3", "judge_min_devices": "4", "inconclusive_timeout": "10m", "watch": "5m"}
    s = parse_request(form_to_request(form))
    assert (s.strata_tag, s.control_share, s.judge_alpha, s.judge_max_looks, s.judge_min_devices, s.inconclusive_timeout_s, s.watch_s) == ("site", 0.2, 0.01, 3, 4, 600.0, 300.0)
    html = pages.create_form({}, {}, "csrf", [], True)
    assert all(f'name="{n}"' in html for n in ("max_drift", "strata_tag", "judge_alpha", "watch", "channel"))
    r = h2.create(waves="50%,100%", select="tag=site=berlin")
    body = pages.rollout_body(r, "")
    assert f"<dt>Target for {AVX2}</dt><dd>digits/2.0.0/{AVX2}/digits-2.0.0.bundle</dd>" in body
    assert f"<dt>Excluded ({NEON})</dt><dd>2 devices: no target of digits@2.0.0 built for profile {NEON}" in body


def test_an_earlier_database_gains_the_columns_and_its_rollouts_keep_their_one_target(db, fleet_repo):
    """Rollouts stored before per-profile targets (no ``rollouts.targets``, no
    ``assignments.target_name``) read as one target for every device and run to the end."""
    import sqlalchemy as sa

    h = Harness(db, fleet_repo, n=4)
    try:
        r = h.create(waves="50%,100%")
        service.start_rollout(h.db, r["id"])
        h.rec.tick()
        for table, column in (("rollouts", "targets"), ("assignments", "target_name")):
            name = getattr(db.t, table).name
            qualified = f'"{db.schema}"."{name}"' if db.schema else f'"{name}"'
            with db.begin() as c:
                c.execute(sa.text(f"ALTER TABLE {qualified} DROP COLUMN {column}"))
        db.create_all()
        with db.connect() as c:
            assert c.execute(sa.select(sa.func.count()).select_from(db.t.rollouts).where(db.t.rollouts.c.targets.is_(None))).scalar() == 1
        t = find_targets(h.repo, "digits", "2.0.0")[VNNI]
        st = service.rollout_status(h.db, r["id"])
        assert st["targets"] == {"*": {"name": t.name, "sha256": t.sha256, "length": t.length, "release": t.release}} and st["excluded"]["devices"] == 0
        assert {a["target"] for a in h.assignments(r["id"]).values()} == {t.name}
        h.rec = h.make_reconciler()
        for _ in range(6):
            h.rec.tick()
            h.respond()
            if service.rollout_status(h.db, r["id"])["status"] == "finished":
                break
        assert service.rollout_status(h.db, r["id"])["succeeded"] == 4
        assert {c.target_name for c in h.pub.commands(h.keys)} == {t.name}
    finally:
        h.close()


def test_the_bundles_page_lists_each_profiles_bundle_of_a_version(two_profile_repo):
    from edgeops.fleet.ui import bundles

    v2 = [b for b in bundles.published_bundles(two_profile_repo["repo"]) if b["ref"] == "digits@2.0.0"]
    assert [(b["profile"], b["target"], b["manifest"]["profile"]) for b in v2] == [
        (AVX2, f"digits/2.0.0/{AVX2}/digits-2.0.0.bundle", AVX2),
        (VNNI, "digits/2.0.0/digits-2.0.0.bundle", VNNI),
    ]
    assert bundles.bundle_refs(two_profile_repo["repo"]) == ["digits@1.0.0", "digits@2.0.0", "digits@3.0.0"]
