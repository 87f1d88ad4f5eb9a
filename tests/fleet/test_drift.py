"""Drift on the console (fleet/drift.py): sketches from telemetry through the real ingest into
the database, merged per version, device, profile and tag, scored against the reference read
from the bundle in the console's repository."""

from __future__ import annotations

import time

import pytest

from edgeops import sketch as sk
from edgeops.fleet.config import DriftConfig, IngestConfig
from edgeops.fleet.drift import ReferenceStore, drift_report
from edgeops.fleet.ingest import Ingestor
from edgeops.fleet.registry import register_devices
from edgeops.protocol import TelemetryBatch, VersionRef, telemetry_topic
from tests.support.bundles import make_onnx_model, reference_inputs, sample_inputs

SETTINGS = DriftConfig(warn_psi=0.1, alert_psi=0.25, alpha=0.01, min_samples=100, window_s=3600)


@pytest.fixture(scope="module")
def drift_repo(tmp_path_factory):
    """cam@1.0.0 with a drift reference, cam@2.0.0 built without one."""
    from edgeops.trust.keys import Keyring
    from edgeops.trust.repository import Repository
    from tests.support.bundles import write_test_bundle

    base = tmp_path_factory.mktemp("drift-repo")
    ring = Keyring.create(base / "keys", root_keys=1, root_threshold=1)
    repo = Repository.init(base / "repo", ring)
    for version, release, reference in (("1.0.0", 1, True), ("2.0.0", 2, False)):
        path = base / f"cam-{version}.bundle"
        write_test_bundle(path, name="cam", version=version, release=release, reference=reference)
        repo.publish(path, ring)
    return {"repo": base / "repo", "keys": base / "keys"}


@pytest.fixture
def ingest(db):
    ing = Ingestor(db, IngestConfig(flush_interval_s=0.02)).start()
    yield ing
    ing.stop()


def _batch(reference, device: str, seq: int, inputs, version: str = "1.0.0") -> tuple[str, bytes]:
    """A telemetry batch whose sketches are those of ``inputs`` (as the agent folds them)."""
    import onnxruntime as ort

    out = ort.InferenceSession(make_onnx_model("good", 0), providers=["CPUExecutionProvider"]).run(None, {"input": inputs})[0]
    sketches = {"input": sk.sketch(reference.layouts["input"], [inputs]), "probs": sk.sketch(reference.layouts["probs"], [out])}
    now = time.time()
    msg = TelemetryBatch(device_id=device, seq=seq, ts_start=now - 10, ts_end=now, active=VersionRef(name="cam", version=version),
                         inference_count=len(inputs), sketches=sketches)
    return telemetry_topic(device), msg.to_json().encode()


def _feed(ing, *msgs):
    for topic, payload in msgs:
        ing.submit(topic, payload)
    assert ing.flush(30)


def test_drift_per_version_device_profile_and_tag(db, ingest, drift_repo):
    refs = ReferenceStore(drift_repo["repo"])
    reference = refs.get("cam", "1.0.0")
    assert reference is not None and refs.get("cam", "2.0.0") is None and refs.get("cam", "9.9.9") is None
    register_devices(db, [
        {"id": "n1", "tags": {"site": "north"}, "profile": "pi"}, {"id": "n2", "tags": {"site": "north"}, "profile": "pi"},
        {"id": "s1", "tags": {"site": "south"}, "profile": "jetson"}, {"id": "tiny", "tags": {"site": "east"}, "profile": "jetson"},
    ])
    # north sees what the model was validated on; south's cameras are brighter (every input shifted)
    north = [_batch(reference, d, seq, sample_inputs(150, seed=40 + 10 * i + seq)) for i, d in enumerate(("n1", "n2")) for seq in (1, 2)]
    south = [_batch(reference, "s1", seq, sample_inputs(150, seed=60 + seq) + 1.5) for seq in (1, 2)]
    tiny = [_batch(reference, "tiny", 1, sample_inputs(12, seed=70) + 0.3)]
    _feed(ingest, *north, *south, *tiny)
    _feed(ingest, south[0])  # a redelivery: stored once

    by_tag = {g["group"]["tag"]: g for g in drift_report(db, refs, SETTINGS, "tag")["groups"]}
    assert by_tag["site=north"]["level"] == "ok" and by_tag["site=north"]["samples"] == 600 and by_tag["site=north"]["devices"] == 2
    assert by_tag["site=north"]["psi"] < 0.1
    assert by_tag["site=south"]["level"] == "alert" and by_tag["site=south"]["psi"] > 1.0 and by_tag["site=south"]["p_value"] < 1e-6
    assert by_tag["site=south"]["samples"] == 300 and by_tag["site=south"]["batches"] == 2
    # 12 inferences: reported with their count and not read as a drift
    assert by_tag["site=east"]["samples"] == 12 and by_tag["site=east"]["level"] == "insufficient"

    by_device = {g["group"]["device"]: g for g in drift_report(db, refs, SETTINGS, "device")["groups"]}
    assert by_device["s1"]["level"] == "alert" and by_device["n1"]["level"] == "ok"
    assert all(v > 1.0 for v in by_device["s1"]["tensors"]["input"]["mean_shift_sd"])
    by_profile = {g["group"]["profile"]: g for g in drift_report(db, refs, SETTINGS, "profile")["groups"]}
    assert by_profile["jetson"]["samples"] == 312 and by_profile["pi"]["samples"] == 600
    versions = drift_report(db, refs, SETTINGS, "version")
    [whole] = versions["groups"]
    assert whole["bundle"] == "cam" and whole["version"] == "1.0.0" and whole["samples"] == 912 and whole["devices"] == 4
    # filters
    only_north = drift_report(db, refs, SETTINGS, "version", tag=("site", "north"))["groups"][0]
    assert only_north["samples"] == 600 and only_north["level"] == "ok"
    assert drift_report(db, refs, SETTINGS, "device", device="s1")["groups"][0]["group"] == {"device": "s1"}
    # a window that ends before the batches: nothing
    assert drift_report(db, refs, SETTINGS, "version", window_s=5, now=time.time() + 60)["groups"] == []


def test_a_version_without_reference_is_reported_without_score(db, ingest, drift_repo):
    refs = ReferenceStore(drift_repo["repo"])
    reference = refs.get("cam", "1.0.0")
    register_devices(db, [{"id": "d1"}])
    _feed(ingest, _batch(reference, "d1", 1, reference_inputs(200, seed=3), version="2.0.0"))
    [g] = drift_report(db, refs, SETTINGS, "version")["groups"]
    assert g["version"] == "2.0.0" and g["reference"] is False and g["level"] == "no_reference" and g["psi"] is None and g["samples"] == 200


def test_bad_questions_are_refused(sqlite_db, drift_repo):
    refs = ReferenceStore(drift_repo["repo"])
    with pytest.raises(ValueError, match="by"):
        drift_report(sqlite_db, refs, SETTINGS, "planet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window_s"):
        drift_report(sqlite_db, refs, SETTINGS, window_s=0)


def test_rest_api_and_metrics(tmp_path, drift_repo):
    import re

    from tests.fleet.test_api import call, make_console, stop_console

    c = make_console("sqlite", tmp_path, drift_repo)
    try:
        reference = ReferenceStore(drift_repo["repo"]).get("cam", "1.0.0")
        register_devices(c.db, [{"id": "s1", "tags": {"site": "south"}, "profile": "jetson"}])
        _feed(c.ingest, *[_batch(reference, "s1", seq, sample_inputs(150, seed=80 + seq) + 1.5) for seq in (1, 2)])
        status, body = call(c, "GET", "/api/v1/drift?by=tag&bundle=cam@1.0.0")
        assert status == 200, body
        [g] = body["groups"]
        assert g["group"] == {"tag": "site=south"} and g["level"] == "alert" and g["samples"] == 300
        assert body["thresholds"]["alert_psi"] == c.config.drift.alert_psi
        status, body = call(c, "GET", "/api/v1/drift?by=device&window_s=60")
        assert status == 200 and body["groups"][0]["group"] == {"device": "s1"} and body["window_s"] == 60
        for bad in ("by=planet", "window_s=0", "tag=nokey", "bundle=@1"):
            status, body = call(c, "GET", f"/api/v1/drift?{bad}")
            assert status == 400, (bad, body)
        assert call(c, "GET", "/api/v1/drift", token=None)[0] == 401
        status, metrics_body = call(c, "GET", "/metrics")
        text = metrics_body.decode()
        assert 'edgeops_drift_samples{bundle="cam",version="1.0.0"} 300.0' in text
        assert 'edgeops_drift_level{bundle="cam",version="1.0.0"} 2.0' in text
        psi = float(re.search(r'^edgeops_drift_psi\{bundle="cam",version="1.0.0"\} (\S+)$', text, re.M).group(1))
        assert psi > c.config.drift.alert_psi
        assert 'edgeops_drift_threshold_psi{level="alert"} 0.25' in text
        # a rollout's max_drift may name a level: fleet.toml's threshold, resolved at creation
        status, created = call(c, "POST", "/api/v1/rollouts", {"bundle": "cam@1.0.0", "max_drift": "alert"})
        assert status == 201, created
        status, shown = call(c, "GET", f"/api/v1/rollouts/{created['id']}")
        assert shown["settings"]["max_drift"] == c.config.drift.alert_psi and shown["settings"]["drift_min_samples"] == c.config.drift.min_samples
        # the CLI reads the same through the REST API
        from click.testing import CliRunner

        from edgeops.fleet.cli import fleet as fleet_cli
        from tests.fleet.test_api import TOKEN

        run = CliRunner().invoke(fleet_cli, ["drift", "--url", c.api_url, "--token", TOKEN, "--by", "tag", "--window", "10m", "--json"])
        assert run.exit_code == 0, run.output
        import json as _json

        doc = _json.loads(run.output)
        assert doc["window_s"] == 600 and doc["groups"][0]["group"] == {"tag": "site=south"}
        run = CliRunner().invoke(fleet_cli, ["drift", "--url", c.api_url, "--token", TOKEN, "--by", "device"])
        assert run.exit_code == 0 and "s1" in run.output and "alert" in run.output, run.output
        # every series the alerting rules read is one the console exports
        from pathlib import Path

        rules = (Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "edgeops-rules.yml").read_text()
        used = set(re.findall(r"\bedgeops_[a-z_]+\b", rules)) - {"edgeops_rules"}
        assert used and all(re.search(rf"^# TYPE {name} ", text, re.M) for name in used), used
    finally:
        stop_console(c, "sqlite")
