"""`edgeops demo` end to end through the real CLI: embedded amqtt broker, and a private mosquitto.

Each run trains the model, builds and signs v1 and v2, starts the console and 20 real agents,
rolls v1 out and watches v2 halt in wave 1, then scores drift per site, captures frames from
the brightest site, exports them and builds v3 validated on them. The summary JSON is checked
against the devices' and the console's own records and the files written, not just ``passed``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.support.broker import TestBroker

pytestmark = pytest.mark.slow

DEVICES = 20


def run_demo(workdir, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `edgeops demo` in a subprocess; returns the process and the summary it wrote."""
    summary_path = workdir / "out" / "summary.json"
    cmd = [sys.executable, "-m", "edgeops.cli", "demo", "--devices", str(DEVICES), "--workdir", str(workdir / "demo"), "--summary", str(summary_path), "--json", "--seed", "3", *extra]
    env = {**os.environ, "COLUMNS": "160"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert summary_path.is_file(), f"no summary written (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
    summary = json.loads(summary_path.read_text())
    return proc, summary


def check_story(proc: subprocess.CompletedProcess, summary: dict) -> None:
    """What the issue asks the demo to show, checked field by field."""
    assert proc.returncode == 0, f"demo failed: {summary.get('failures')}\n{proc.stderr[-4000:]}"
    assert json.loads(proc.stdout) == summary  # --json prints the same document it wrote
    assert summary["passed"] is True and summary["failures"] == []
    assert summary["devices"] == DEVICES

    # v1 reached every device, through every wave
    assert summary["v1_on_devices"] == DEVICES
    v1 = summary["v1_rollout"]
    assert v1["status"] == "finished"
    assert [w["status"] for w in v1["waves"]] == ["passed", "passed", "passed"]
    assert sum(w["devices"] for w in v1["waves"]) == DEVICES

    # v2 halted in wave 1; nothing outside wave 1 ever got it
    v2 = summary["v2_rollout"]
    assert summary["v2_halted_in_wave"] == 1
    assert v2["waves"][0]["status"] in ("halted", "failed")
    assert all(w["status"] == "cancelled" and w["devices"] == 0 for w in v2["waves"][1:])
    wave1 = set(summary["wave_1_devices"])
    assert 0 < len(wave1) < DEVICES
    assert summary["devices_assigned_v2_by_console_outside_wave_1"] == []
    assert set(summary["devices_ever_assigned_v2"]) <= wave1
    assert summary["devices_ever_assigned_v2_all_in_wave_1"] is True
    # the devices activated v2 and rolled back by themselves on NaN outputs (a real model fault)
    assert summary["devices_ran_v2"] and set(summary["devices_ran_v2"]) <= wave1
    assert summary["devices_rolled_back_by_themselves"]
    nan_gates = [g for g in summary["device_probation_gates"] if g["gate"] == "nan_outputs"]
    assert nan_gates and all(g["measured"] > g["threshold"] for g in nan_gates)
    halted_gates = {g["gate"]: g for g in v2["waves"][0]["gates"]}
    assert halted_gates["max_failure_rate"]["outcome"] == "fail"
    assert summary["field"]["2.0.0"]["nan_outputs"] > 0
    assert summary["field"]["1.0.0"]["nan_outputs"] == 0

    # the fault is in the model: the built v2 is finite on lab frames and NaN on drifted ones
    fault = summary["model"]["v2"]["fault"]
    assert fault["lab_nan"] == 0 and fault["drifted_nan"] > 0
    assert all(g["passed"] for g in summary["model"]["v2"]["packager_gates"])

    # every device back on v1
    assert summary["devices_on_v1_at_end"] == DEVICES
    assert summary["versions_at_end"] == {"1.0.0": DEVICES}
    for key in ("train", "build_v1", "rollout_v1", "build_v2", "rollout_v2", "drift", "capture", "build_v3", "total"):
        assert summary["timings"][key] > 0
    check_loop(summary)


def check_loop(summary: dict) -> None:
    """The monitoring loop (issue 17): the brightest cohort alerts, capture brings its frames
    back, they are exported and v3 is built on them, checked against the files themselves."""
    from edgeops.bundle import MANIFEST_NAME, Manifest
    from edgeops.demo.fleet import BRIGHT_SITE, SITES, site_of

    cohort_devices = sum(1 for i in range(DEVICES) if site_of(i) == BRIGHT_SITE)
    d = summary["drift"]
    assert d["cohort"] == f"site={BRIGHT_SITE}" and d["bundle"] == "digits@1.0.0"
    assert set(d["cohorts"]) == set(SITES)
    assert d["level"] == "alert" and d["psi"] >= d["thresholds"]["alert_psi"] and d["p_value"] < d["thresholds"]["alpha"]
    assert d["samples"] >= d["thresholds"]["min_samples"] and d["devices"] == cohort_devices
    assert all(d["psi"] > c["psi"] for site, c in d["cohorts"].items() if site != BRIGHT_SITE)  # the brightest cameras drift most

    cap = summary["capture"]
    assert cap["cohort"]["site"] == BRIGHT_SITE and cap["devices_ordered"] == cohort_devices
    assert cap["stored"] == cap["captured_on_devices"] >= 32  # every frame the devices kept reached the console
    assert 0 < cap["devices_with_samples"] <= cohort_devices and cap["triggers"] == ["random"]

    e = summary["export"]
    path = Path(e["path"])
    assert e["samples"] == e["rows"] == e["labelled"] == cap["stored"] and e["labels"] is True
    assert hashlib.sha256(path.read_bytes()).hexdigest() == e["sha256"]
    with np.load(path) as z:
        frames, labels = z["input"], z["labels"]
    assert frames.shape[:2] == (cap["stored"], 1) and frames.dtype == np.float32 and labels.shape == (cap["stored"],)
    assert 0.0 <= frames.min() and frames.max() <= 1.0  # camera frames, clipped as a sensor saturates
    assert set(labels.tolist()) <= set(range(10))

    v3 = summary["v3"]
    assert v3["version"] == "3.0.0" and v3["gates_passed"] is True
    assert v3["validation_sha256"] == e["sha256"] and v3["validation_is_export"] is True
    with tarfile.open(v3["bundle"]) as tar:  # the manifest as the bundle carries it, not the demo's word
        member = tar.next()
        assert member is not None and member.name == MANIFEST_NAME
        manifest = Manifest.from_json_bytes(tar.extractfile(member).read(), source="v3")
    assert manifest.version == "3.0.0" and manifest.provenance.validation_sha256 == e["sha256"]
    assert manifest.monitoring is not None and manifest.monitoring.source == "validation" and manifest.monitoring.rows == cap["stored"]


def test_demo_embedded_broker(tmp_path):
    proc, summary = run_demo(tmp_path)
    check_story(proc, summary)
    assert summary["broker"]["kind"] == "embedded amqtt"
    assert "Roll v2 out" in proc.stderr and "HALTED" in proc.stderr
    assert "site=depot" in proc.stderr and "Monitoring loop" in proc.stderr


def test_demo_external_broker(tmp_path):
    with TestBroker() as broker:
        proc, summary = run_demo(tmp_path, "--broker", broker.url)
    check_story(proc, summary)
    assert summary["broker"] == {"kind": "external", "url": broker.url, "mqtt": "5" if broker.kind == "mosquitto" else "3.1.1"}


def _machine_broker_up(port: int = 1883) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not _machine_broker_up(), reason="no MQTT broker on 127.0.0.1:1883 (the machine's mosquitto service)")
def test_demo_machine_broker(tmp_path):
    """The machine's own, shared mosquitto: demo devices are tagged with the run id, so other
    clients on the broker are neither selected nor disturbed."""
    proc, summary = run_demo(tmp_path, "--broker", "mqtt://127.0.0.1:1883")
    check_story(proc, summary)
    assert summary["broker"]["kind"] == "external" and summary["broker"]["url"] == "mqtt://127.0.0.1:1883"
