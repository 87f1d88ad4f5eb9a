"""Gate samples for the rollout page's charts: a row when a value or verdict changes, live rollouts only."""

from __future__ import annotations

import json

import pytest

from edgeops.fleet.rollouts import service
from edgeops.fleet.rollouts.settings import parse_request
from edgeops.fleet.ui import gate_history
from edgeops.fleet.ui.routes import field_of


def _set_gates(db, rid, gates):
    with db.begin() as conn:
        conn.execute(db.t.waves.update().where(db.t.waves.c.rollout_id == rid, db.t.waves.c.idx == 0).values(gates=json.dumps(gates)))


def test_samples_on_change_only(db, fleet_repo):
    from edgeops.fleet.registry import register_devices

    register_devices(db, [{"id": f"d{i}"} for i in range(4)])
    r = service.create_rollout(db, parse_request({"bundle": "digits@2.0.0", "waves": [50, 100]}), fleet_repo["repo"])
    _set_gates(db, r["id"], [{"gate": "max_failure_rate", "passed": True, "measured": 0.0, "threshold": 0.05}])
    assert gate_history.sample(db, now=1.0) == 0  # created: not live yet
    service.start_rollout(db, r["id"])
    _set_gates(db, r["id"], [{"gate": "max_failure_rate", "passed": True, "measured": 0.0, "threshold": 0.05}])
    assert gate_history.sample(db, now=2.0) == 1
    assert gate_history.sample(db, now=3.0) == 0  # unchanged
    _set_gates(db, r["id"], [{"gate": "max_failure_rate", "passed": False, "measured": 0.5, "threshold": 0.05}, {"gate": "min_agreement", "outcome": "inconclusive", "measured": None, "threshold": 0.9}])
    assert gate_history.sample(db, now=4.0) == 2
    h = gate_history.history(db, r["id"])
    assert h["wave 1 / max_failure_rate"]["ts"] == [2.0, 4.0] and h["wave 1 / max_failure_rate"]["measured"] == [0.0, 0.5]
    assert h["wave 1 / max_failure_rate"]["outcome"] == "fail" and h["wave 1 / min_agreement"]["outcome"] == "inconclusive"


@pytest.mark.parametrize(
    "message, field",
    [
        ("waves: '50x' is not a percentage (example: 1%,10%,50%,100%)", "waves"),
        ("rollout settings refused: waves: wave 2 (20.0%) is not above wave 1 (50.0%)", "waves"),
        ("rollout settings refused: max_latency_regression: 0.5 is a ratio", "max_latency_regression"),
        ("select: 'x' should be profile=NAME, tag=KEY=VALUE, device=ID or all", "select"),
        ("rollout settings refused: body: something else", "_form"),
        ("bake: '1y' is not a duration", "bake"),
    ],
)
def test_settings_errors_land_on_their_form_field(message, field):
    assert field_of(message) == field
