"""The max_drift rollout gate (fleet/rollouts/drift_gate.py): verdicts, and its input read from
the sketches the wave's devices sent through the real ingest into a real database."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeops import sketch as sk
from edgeops.fleet.config import IngestConfig
from edgeops.fleet.drift import ReferenceStore
from edgeops.fleet.ingest import Ingestor
from edgeops.fleet.registry import register_devices
from edgeops.fleet.rollouts import gates
from edgeops.fleet.rollouts.drift_gate import max_drift, new_version_drift
from edgeops.fleet.rollouts.inputs import WaveSource
from edgeops.fleet.rollouts.settings import RolloutSettings, parse_request
from edgeops.fleet.targets import list_targets
from tests.fleet.test_drift import _batch, _feed, drift_repo  # noqa: F401  (the fixture)
from tests.support.bundles import sample_inputs


def _settings(**kw) -> RolloutSettings:
    return RolloutSettings(bundle_name="cam", bundle_version="1.0.0", **kw)


def _drift(psi: float, p_value: float, samples: int) -> sk.Drift:
    return sk.Drift(psi=psi, ks=0.3, p_value=p_value, samples=samples, reference_samples=400)


def test_verdicts():
    stats = gates.WaveStats(size=1)
    assert max_drift(stats, _settings()) is None  # not configured
    cfg = _settings(max_drift=0.25, drift_min_samples=100)
    assert max_drift(gates.WaveStats(size=1, extra={"drift": None}), cfg).outcome is gates.Outcome.INCONCLUSIVE
    few = max_drift(gates.WaveStats(size=1, extra={"drift": _drift(3.0, 1e-9, 12)}), cfg)
    assert few.outcome is gates.Outcome.INCONCLUSIVE and "12 of 100" in few.detail  # never a pass, never a fail on 12 samples
    assert max_drift(gates.WaveStats(size=1, extra={"drift": _drift(3.0, 1e-9, 500)}), cfg).outcome is gates.Outcome.FAIL
    assert max_drift(gates.WaveStats(size=1, extra={"drift": _drift(3.0, 0.2, 500)}), cfg).outcome is gates.Outcome.PASS  # large but not significant
    ok = max_drift(gates.WaveStats(size=1, extra={"drift": _drift(0.05, 1e-9, 500)}), cfg)
    assert ok.outcome is gates.Outcome.PASS and ok.measured == 0.05 and ok.threshold == 0.25
    assert "max_drift" in gates.GATES and gates.inputs_needed(cfg)[-1] == "new_version_drift"
    assert "new_version_drift" not in gates.inputs_needed(_settings())


def test_settings_from_a_request_body():
    s = parse_request({"bundle": "cam@1.0.0", "max_drift": 0.3, "drift_min_samples": 50})
    assert s.max_drift == 0.3 and s.drift_min_samples == 50 and s.drift_alpha == 0.01
    from edgeops.fleet.rollouts.settings import RolloutSettingsError

    with pytest.raises(RolloutSettingsError, match="max_drift"):
        parse_request({"bundle": "cam@1.0.0", "max_drift": -1})
    with pytest.raises(RolloutSettingsError, match="neither a PSI"):
        parse_request({"bundle": "cam@1.0.0", "max_drift": "loud"})
    # a level name takes fleet.toml's threshold, alpha and min_samples, resolved at creation
    from edgeops.fleet.config import DriftConfig

    fleet_toml = DriftConfig(warn_psi=0.15, alert_psi=0.4, alpha=0.001, min_samples=50)
    s = parse_request({"bundle": "cam@1.0.0", "max_drift": "alert"}, fleet_toml)
    assert (s.max_drift, s.drift_alpha, s.drift_min_samples) == (0.4, 0.001, 50)
    assert parse_request({"bundle": "cam@1.0.0", "max_drift": "warn", "drift_min_samples": 9}, fleet_toml).model_dump(include={"max_drift", "drift_min_samples"}) == {"max_drift": 0.15, "drift_min_samples": 9}
    assert parse_request({"bundle": "cam@1.0.0", "max_drift": "0.3"}).max_drift == 0.3


@pytest.mark.parametrize("shift,expected", [(0.0, gates.Outcome.PASS), (1.5, gates.Outcome.FAIL)])
def test_gate_on_the_wave_devices_sketches(sqlite_db, drift_repo, shift, expected):  # noqa: F811
    db = sqlite_db
    reference = ReferenceStore(drift_repo["repo"]).get("cam", "1.0.0")
    register_devices(db, [{"id": d} for d in ("w1", "w2", "other")])
    now = time.time()
    with db.begin() as conn:
        conn.execute(db.t.assignments.insert(), [
            {"rollout_id": "r1", "device_id": d, "wave_idx": 0, "bundle_name": "cam", "bundle_version": "1.0.0", "command_id": f"c-{d}", "seq": 1,
             "expires": now + 3600, "status": "committed", "created_at": now, "updated_at": now, "detail": ""}
            for d in ("w1", "w2")
        ])
    ing = Ingestor(db, IngestConfig(flush_interval_s=0.02)).start()
    try:
        _feed(ing, *[_batch(reference, d, 1, sample_inputs(150, seed=90 + i) + shift) for i, d in enumerate(("w1", "w2"))],
              # a device outside the wave, far off: must not count
              _batch(reference, "other", 1, sample_inputs(150, seed=99) + (0.0 if shift else 3.0)))
    finally:
        ing.stop()
    with db.connect() as conn:
        src = WaveSource(db, conn, SimpleNamespace(id="r1", bundle_name="cam", bundle_version="1.0.0"), SimpleNamespace(idx=0), now - 60, time.time(),
                         lambda: list_targets(drift_repo["repo"]), repo_dir=Path(drift_repo["repo"]))
        values = new_version_drift(src)
    d = values["drift"]
    assert d is not None and d.samples == 300
    verdict = max_drift(gates.WaveStats(size=2, extra=values), _settings(max_drift=0.25, drift_min_samples=100))
    assert verdict.outcome is expected, verdict


def test_the_reconciler_reads_the_gate_input_and_judges_the_wave(sqlite_db, drift_repo):  # noqa: F811
    """Through the real reconciler's wave_stats and gates.evaluate: its WaveSource finds the
    repository (and the bundle's reference) the way production does."""
    from edgeops.fleet.rollouts import queries, service
    from edgeops.fleet.rollouts.reconciler import Reconciler

    db = sqlite_db
    reference = ReferenceStore(drift_repo["repo"]).get("cam", "1.0.0")
    register_devices(db, [{"id": d} for d in ("w1", "w2")])
    settings = parse_request({"bundle": "cam@1.0.0", "max_drift": "alert", "waves": "100%"})
    rid = service.create_rollout(db, settings, drift_repo["repo"])["id"]
    now = time.time()
    with db.begin() as conn:
        conn.execute(db.t.assignments.insert(), [
            {"rollout_id": rid, "device_id": d, "wave_idx": 0, "bundle_name": "cam", "bundle_version": "1.0.0", "command_id": f"c-{d}", "seq": 1,
             "expires": now + 3600, "status": "committed", "created_at": now, "updated_at": now, "detail": ""}
            for d in ("w1", "w2")
        ])
        # the wave began before its devices reported, as in production (an unstarted wave's window
        # begins at the look: on a slow host the batches fed here fell outside it)
        conn.execute(db.t.waves.update().where(db.t.waves.c.rollout_id == rid, db.t.waves.c.idx == 0).values(started_at=now - 5))
    ing = Ingestor(db, IngestConfig(flush_interval_s=0.02)).start()
    try:
        _feed(ing, *[_batch(reference, d, 1, sample_inputs(150, seed=70 + i) + 1.5) for i, d in enumerate(("w1", "w2"))])
    finally:
        ing.stop()
    rec = Reconciler(db, repo_dir=drift_repo["repo"], clock=time.time)
    with db.connect() as conn:
        r = queries.load_rollout(db, conn, rid)
        wave = queries.load_wave(db, conn, rid, 0)
    stats = rec.wave_stats(r, wave)
    assert stats.extra["drift"].samples == 300
    outcome, verdicts = gates.evaluate(stats, r.settings)
    v = {x.gate: x for x in verdicts}["max_drift"]
    assert v.outcome is gates.Outcome.FAIL and outcome is gates.Outcome.FAIL and v.threshold == 0.25
