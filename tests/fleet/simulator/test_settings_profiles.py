"""Several hardware profiles in one simulated fleet: the per-device draw and ``--profiles`` parsing."""

from __future__ import annotations

from collections import Counter

import pytest

from edgeops.errors import ConfigError
from edgeops.fleet.simulator.cli import _parse_profiles
from edgeops.fleet.simulator.settings import SimSettings


def settings(tmp_path, **kw) -> SimSettings:
    root = tmp_path / "root.json"
    root.write_text("{}")
    return SimSettings(broker_url="mqtt://127.0.0.1:1883", root=str(root), workdir=str(tmp_path / "w"), **kw)


def test_one_profile_by_default(tmp_path):
    s = settings(tmp_path, devices=3, profile="x86_64-avx2")
    assert {s.profile_of(d) for d in s.all_device_ids()} == {"x86_64-avx2"} and s.all_profiles() == ["x86_64-avx2"]
    assert s.agent_config_dict("sim-00001")["profile"] == "x86_64-avx2"


def test_shares_are_kept_in_every_run_of_consecutive_devices(tmp_path):
    s = settings(tmp_path, devices=1000, profiles={"x86_64-avx512-vnni": 0.5, "x86_64-avx2": 0.25, "arm64-litert": 0.25})
    ids = s.all_device_ids()
    counts = Counter(s.profile_of(d) for d in ids)
    assert counts == {"x86_64-avx512-vnni": 500, "x86_64-avx2": 250, "arm64-litert": 250}
    for start in range(0, 1000, 40):  # any 40 consecutive devices: each profile within 2 of its share
        c = Counter(s.profile_of(d) for d in ids[start : start + 40])
        assert abs(c["x86_64-avx512-vnni"] - 20) <= 2 and abs(c["x86_64-avx2"] - 10) <= 2, c
    # deterministic, and the agent's config carries the device's own profile
    assert [s.profile_of(d) for d in ids] == [settings(tmp_path, devices=1000, profiles=dict(s.profiles)).profile_of(d) for d in ids]
    assert all(s.agent_config_dict(d)["profile"] == s.profile_of(d) for d in ids[:10])
    assert s.for_process(1).profiles == s.profiles  # travels to simulator processes
    # the draw follows the device number, not the position in this run
    later = settings(tmp_path, devices=10, first_index=500, profiles=dict(s.profiles))
    assert [later.profile_of(d) for d in later.all_device_ids()] == [s.profile_of(d) for d in ids[500:510]]


def test_parse_profiles():
    assert _parse_profiles("x86_64-avx512-vnni:0.5, x86_64-avx2:0.5") == {"x86_64-avx512-vnni": 0.5, "x86_64-avx2": 0.5}
    assert _parse_profiles("x86_64-avx2") == {"x86_64-avx2": 1.0}
    assert _parse_profiles(None) == {} and _parse_profiles("") == {}


@pytest.mark.parametrize(
    "text, part",
    [
        ("x86_64-avx2:half", "share 'half' is not a number"),
        ("x86_64-avx2:0", "positive share"),
        (":0.5", "expected NAME:SHARE"),
        ("x86_64-avx2:0.5,x86_64-avx2:0.5", "profile 'x86_64-avx2' given twice"),
    ],
)
def test_bad_profiles_name_the_part(text, part):
    with pytest.raises(ConfigError) as e:
        _parse_profiles(text)
    assert part in str(e.value) and e.value.exit_code == 3


def test_settings_refuse_a_share_that_is_not_positive(tmp_path):
    with pytest.raises(ConfigError, match="needs a positive share"):
        settings(tmp_path, profiles={"x86_64-avx2": 0.0})
