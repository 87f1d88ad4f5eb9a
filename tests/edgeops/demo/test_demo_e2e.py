"""`edgeops demo` end to end through the real CLI: embedded amqtt broker, and a private mosquitto.

Each run trains the model, builds and signs v1 and v2, starts the console and 20 real agents,
rolls v1 out and watches v2 halt in wave 1. The summary JSON is checked against the devices'
and the console's own records, not just the ``passed`` flag.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

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
    for key in ("train", "build_v1", "rollout_v1", "build_v2", "rollout_v2", "total"):
        assert summary["timings"][key] > 0


def test_demo_embedded_broker(tmp_path):
    proc, summary = run_demo(tmp_path)
    check_story(proc, summary)
    assert summary["broker"]["kind"] == "embedded amqtt"
    assert "Roll v2 out" in proc.stderr and "HALTED" in proc.stderr


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
