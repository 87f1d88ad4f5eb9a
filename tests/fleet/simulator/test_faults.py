"""Fault spec parsing (good and bad) and the deterministic choice of devices."""

from __future__ import annotations

import pytest

from edgeops.errors import ConfigError
from edgeops.fleet.simulator.faults import DEFAULT_SLOW_FACTOR, FaultSpecError, parse_faults, parse_rule


def test_full_example_parses():
    plan = parse_faults("nan:0.3@digits=2.0.0,slow:0.1@*=2.*,crash:0.05@digits=2.0.0,offline:0.02@digits=2.0.0")
    kinds = [(r.kind, r.fraction, r.bundle, r.version) for r in plan.rules]
    assert kinds == [("nan", 0.3, "digits", "2.0.0"), ("slow", 0.1, "*", "2.*"), ("crash", 0.05, "digits", "2.0.0"), ("offline", 0.02, "digits", "2.0.0")]
    assert plan.describe() == "nan:0.3@digits=2.0.0,slow:0.1@*=2.*,crash:0.05@digits=2.0.0,offline:0.02@digits=2.0.0"


def test_defaults_options_and_percentages():
    r = parse_rule("nan:30%")
    assert (r.fraction, r.bundle, r.version, r.golden) == (0.3, "*", "*", False)
    assert parse_rule("nan(all):1").golden is True
    slow = parse_rule("slow:0.5@*")
    assert slow.golden is True and slow.factor == DEFAULT_SLOW_FACTOR
    assert parse_rule("slow(x8):0.5").factor == 8.0
    assert parse_rule("crash(all):0").fraction == 0.0
    assert not parse_faults("") and not parse_faults(None) and parse_faults("").describe() == "none"


@pytest.mark.parametrize(
    "spec, part",
    [
        ("nan", "expected KIND"),
        ("boom:0.1", "unknown kind 'boom'"),
        ("nan:abc", "fraction 'abc' is not a number"),
        ("nan:1.5", "fraction '1.5' must be between 0 and 1"),
        ("nan:-0.1", "must be between 0 and 1"),
        ("nan:150%", "must be between 0 and 1"),
        ("nan:0.1@digits", "selector 'digits' must be BUNDLE=VERSION"),
        ("nan:0.1@=2.0.0", "must be BUNDLE=VERSION"),
        ("slow(xfast):0.1", "option 'xfast' must be x<number>"),
        ("slow(x0):0.1", "positive factor"),
        ("nan(x3):0.1", "unknown option 'x3' for nan"),
        ("offline(all):0.1", "offline takes no options"),
        ("nan:0.1,,crash:0.1", "rule 2 is empty"),
        ("slow:1@digits=2.0.0#site=berlin", "'#site=berlin' must be #profile=PROFILE"),
        ("slow:1@digits=2.0.0#x86_64-avx2", "'#x86_64-avx2' must be #profile=PROFILE"),
        ("slow:1#profile=", "#profile= names no profile"),
        ("slow:1@digits=2.0.0#profile=a#profile=b", "expected KIND[(OPTIONS)]:FRACTION[@BUNDLE=VERSION][#profile=PROFILE]"),
        ("slow:1#profile=x86_64-avx2@digits=2.0.0", "#profile=PROFILE comes last, after @BUNDLE=VERSION"),
    ],
)
def test_bad_specs_name_the_part(spec, part):
    with pytest.raises(FaultSpecError) as e:
        parse_faults(spec)
    assert part in str(e.value)
    assert isinstance(e.value, ConfigError) and e.value.exit_code == 3


def test_bad_rule_is_named_among_good_ones():
    with pytest.raises(FaultSpecError, match="'crash:x'"):
        parse_faults("nan:0.1@digits=2.0.0,crash:x")


def test_draw_is_deterministic_and_close_to_the_fraction():
    plan = parse_faults("nan:0.3@digits=2.0.0")
    ids = [f"sim-{i:05d}" for i in range(4000)]
    hit = [d for d in ids if plan.for_device(d)]
    assert hit == [d for d in ids if parse_faults("nan:0.3@digits=2.0.0").for_device(d)]
    assert 0.27 < len(hit) / len(ids) < 0.33
    # the draw depends on the kind and the device, not the version: the same devices on 3.0.0
    assert hit == [d for d in ids if parse_faults("nan:0.3@digits=3.0.0").for_device(d)]
    assert not parse_faults("nan:0").for_device("sim-00001") and parse_faults("nan:1").for_device("sim-00001")


def test_rules_apply_by_bundle_and_version_glob():
    faults = parse_faults("nan:1@digits=2.*,crash:1@*=3.0.0").for_device("d1")
    assert faults.active("nan", "digits", "2.0.1") is not None
    assert faults.active("nan", "digits", "1.0.0") is None
    assert faults.active("nan", "other", "2.0.0") is None
    assert faults.active("crash", "anything", "3.0.0") is not None
    assert faults.active("slow", "digits", "2.0.0") is None


def test_profile_selector_parses_and_hits_only_that_profile():
    plan = parse_faults("slow(x0.65):1@*=2.0.0#profile=x86_64-avx2,slow(x0.5):1")
    first, base = plan.rules
    assert (first.kind, first.factor, first.bundle, first.version, first.profile) == ("slow", 0.65, "*", "2.0.0", "x86_64-avx2")
    assert base.profile == "*" and parse_rule("nan:0.3@digits=2.0.0").profile == "*"
    assert plan.describe() == "slow(x0.65):1@*=2.0.0#profile=x86_64-avx2,slow(x0.5):1"
    avx2 = plan.for_device("sim-00001", "x86_64-avx2")
    vnni = plan.for_device("sim-00001", "x86_64-avx512-vnni")
    # on 2.0.0 the avx2 device takes 0.65 of its budget, the other 0.5: 30% slower on one profile only
    assert avx2.active("slow", "digits", "2.0.0").factor == 0.65 and vnni.active("slow", "digits", "2.0.0").factor == 0.5
    assert avx2.active("slow", "digits", "1.0.0").factor == 0.5 == vnni.active("slow", "digits", "1.0.0").factor
    # a device whose profile is not known is hit only by rules for every profile
    assert [r.profile for r in plan.for_device("sim-00001").rules] == ["*"]
    # the profile is a glob; without '@' it covers every version
    r = parse_rule("nan:1#profile=x86_64-*")
    assert (r.bundle, r.version) == ("*", "*") and r.hits("d", "x86_64-avx2") and not r.hits("d", "arm64-litert")


def test_profile_fraction_is_a_share_of_that_profiles_devices():
    plan = parse_faults("crash:0.5@digits=2.0.0#profile=arm64-litert")
    ids = [f"sim-{i:05d}" for i in range(2000)]
    arm = [d for d in ids if plan.for_device(d, "arm64-litert")]
    assert 0.45 < len(arm) / len(ids) < 0.55
    # the same devices as the rule without a profile would pick among them; none of another profile
    assert arm == [d for d in ids if parse_faults("crash:0.5@digits=2.0.0").for_device(d)]
    assert not any(plan.for_device(d, "x86_64-avx2") for d in ids)
