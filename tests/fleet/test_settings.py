"""Rollout settings: malformed or contradictory ones are refused at creation, naming the field."""

from __future__ import annotations

import pytest

from edgeops.errors import ConfigError
from edgeops.fleet.rollouts.settings import (
    RolloutSettingsError,
    build_settings,
    parse_bundle,
    parse_duration,
    parse_request,
    parse_selector,
    parse_waves,
)


def test_defaults_and_text_forms():
    s = parse_request({"bundle": "digits@2.0.0", "select": "tag=site=berlin,profile=x86", "waves": "1%,10%,50%,100%", "bake": "10m"})
    assert (s.bundle_name, s.bundle_version) == ("digits", "2.0.0")
    assert s.waves == [1, 10, 50, 100] and s.bake_s == 600
    assert s.selector.tags == {"site": "berlin"} and s.selector.profile == "x86"
    assert s.on_gate_failure == "pause" and not s.approve_each_wave


@pytest.mark.parametrize(
    "text,seconds",
    [("0", 0), ("90", 90), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("1.5h", 5400), ("2m30s", 150), (45, 45)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "-5", "10x", "m", "ten minutes", "5ms"])
def test_bad_durations_name_the_field(text):
    with pytest.raises(RolloutSettingsError, match="bake"):
        parse_duration(text, "bake")


@pytest.mark.parametrize(
    "body,field",
    [
        ({"waves": "10%,5%,100%"}, "waves"),
        ({"waves": "10%,10%"}, "waves"),
        ({"waves": "50%,150%"}, "waves"),
        ({"waves": "0%,100%"}, "waves"),
        ({"waves": "1%,ten%"}, "waves"),
        ({"waves": []}, "waves"),
        ({"max_failure_rate": -0.1}, "max_failure_rate"),
        ({"max_failure_rate": 1.5}, "max_failure_rate"),
        ({"max_rollback_rate": -1}, "max_rollback_rate"),
        ({"min_reporting": 0}, "min_reporting"),
        ({"min_reporting": 1.2}, "min_reporting"),
        ({"min_agreement": 2}, "min_agreement"),
        ({"max_latency_regression": 0.8}, "max_latency_regression"),
        ({"max_latency_regression": -1}, "max_latency_regression"),
        ({"bake": "soon"}, "bake"),
        ({"bake": -3}, "bake"),
        ({"on_gate_failure": "explode"}, "on_gate_failure"),
        ({"bundle": "digits"}, "bundle"),
        ({"bundle": "@1.0"}, "bundle"),
        ({"select": "color=red"}, "select"),
        ({"select": "device=bad id!"}, "select"),
        ({"max_failure_rate": 0.05, "max_rollback_rate": 0.5}, "max_rollback_rate"),
        ({"wavez": "1%"}, "wavez"),
    ],
)
def test_refused_with_field_named(body, field):
    full = {"bundle": "digits@2.0.0", **body}
    with pytest.raises(RolloutSettingsError) as e:
        parse_request(full)
    assert field in str(e.value)
    assert isinstance(e.value, ConfigError) and e.value.exit_code == 3


def test_selector_matching():
    sel = parse_selector("tag=site=berlin,tag=line,profile=p1")
    assert sel.matches("d1", "p1", {"site": "berlin", "line": "3"})
    assert not sel.matches("d1", "p2", {"site": "berlin", "line": "3"})
    assert not sel.matches("d1", "p1", {"site": "paris", "line": "3"})
    assert not sel.matches("d1", "p1", {"site": "berlin"})
    assert parse_selector("all").matches("x", None, {})
    assert parse_selector("device=a+b").matches("b", None, {}) and not parse_selector("device=a+b").matches("c", None, {})
    assert parse_selector("tag=site:berlin").tags == {"site": "berlin"}


def test_parse_helpers():
    assert parse_waves("1%, 10% ,100") == [1, 10, 100]
    assert parse_bundle("a-b@1.2.3") == ("a-b", "1.2.3")
    s = build_settings(bundle_name="x", bundle_version="1", waves=[100])
    assert s.waves == [100]
