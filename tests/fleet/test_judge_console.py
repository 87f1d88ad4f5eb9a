"""The judge through the console's surfaces: `edgeops rollout create` with the judge's options,
a rollout with no telemetry paused as inconclusive, and what `edgeops rollout status`, the REST
API and the OpenAPI document show of it (real console, SQLite, real HTTP)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeops.fleet.cli import rollout
from edgeops.fleet.config import RolloutConfig
from edgeops.fleet.rollouts.reconciler import Reconciler
from tests.fleet.test_api import TOKEN, call, make_console, stop_console


@pytest.fixture
def console(tmp_path, fleet_repo):
    c = make_console("sqlite", tmp_path, fleet_repo)
    yield c
    stop_console(c, "sqlite")


def cli(console, *args):
    res = CliRunner().invoke(rollout, [*args, "--url", console.api_url, "--token", TOKEN], catch_exceptions=False, env={"COLUMNS": "400"})  # rich wraps at the width
    assert res.exit_code == 0, res.output
    return res.output


def test_silent_rollout_pauses_as_inconclusive_in_status_api_and_openapi(console):
    with console.db.begin() as conn:  # the devices run v1 (an upgrade: there is something to regress from)
        conn.execute(console.db.t.devices.update().values(active_name="digits", active_version="1.0.0"))
    out = cli(
        console, "create", "--bundle", "digits@2.0.0", "--waves", "50%,100%", "--max-latency-regression", "1.1",
        "--judge-min-devices", "2", "--control-share", "0.5", "--inconclusive-timeout", "10m", "--judge-look-interval", "30s", "--strata-tag", "site", "--maintenance", "tag=site=x;0 2 * * *;2h;Europe/Berlin", "--start", "--json",
    )
    r = json.loads(out)
    s = r["settings"]
    assert (s["judge_min_devices"], s["control_share"], s["inconclusive_timeout_s"], s["judge_look_interval_s"], s["judge_alpha"], s["judge_max_looks"], s["strata_tag"]) == (2, 0.5, 600, 30, 0.05, 5, "site")
    now = [1000.0]
    rec = Reconciler(console.db, RolloutConfig(), None, console.config.repository.dir, clock=lambda: now[0])
    rec.tick()  # wave 1: 2 of the 4 devices; 2 held back as the control; nobody reports
    rec.tick()
    status, body = call(console, "GET", f"/api/v1/rollouts/{r['id']}")
    gate = {g["gate"]: g for g in body["waves"][0]["gates"]}["max_latency_regression"]
    assert status == 200 and body["status"] == "running" and gate["outcome"] == "inconclusive" and gate["since"] == 1000.0
    assert body["waves"][0]["devices"] == 2
    now[0] += 600
    rec.tick()
    status, body = call(console, "GET", f"/api/v1/rollouts/{r['id']}")
    assert body["status"] == "paused" and body["reason"].startswith("wave 1 inconclusive: max_latency_regression"), body["reason"]
    assert "0 of the wave's 2 devices reported telemetry" in body["reason"] and body["waves"][0]["status"] == "halted"
    text = cli(console, "status", r["id"])
    assert "paused" in text and "max_latency_regression=inconclusive" in text and "max_latency_regression: inconclusive:" in text
    assert "alpha 0.05 over 5 looks (Bonferroni)" in text
    assert s["maintenance"][0]["timezone"] == "Europe/Berlin" and "maintenance window: tag=site=x from cron" in text and "cron '0 2 * * *' for 7200s (Europe/Berlin)" in text
    status, doc = call(console, "GET", "/openapi.json", token=None)
    props = json.dumps(doc)
    for name in ("judge_alpha", "judge_max_looks", "judge_look_interval", "judge_min_devices", "control_share", "inconclusive_timeout", "strata_tag"):
        assert f'"{name}"' in props


def test_bad_judge_settings_are_refused_naming_the_field(console):
    status, err = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@2.0.0", "control_share": 1.0})
    assert status == 422 and "control_share" in err["error"]
    status, err = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@2.0.0", "inconclusive_timeout": "soon"})
    assert status in (400, 422) and "inconclusive_timeout" in err["error"]
    status, err = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@2.0.0", "judge_max_looks": 0})
    assert status == 422 and "judge_max_looks" in err["error"]


def test_promotion_refused_through_the_api_names_the_missing_channel(console):
    status, err = call(console, "POST", "/api/v1/rollouts", {"bundle": "digits@2.0.0", "channel": "prod", "requires_channel": "staging"})
    assert status == 409 and "no rollout of this version finished in channel staging" in err["error"]
