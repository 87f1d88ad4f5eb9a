"""End to end through the real CLI (`python -m edgeops.cli agent run`) against a real mosquitto:
a good update is served; NaN / 5x-slow / crashing bundles are rolled back with the right gate
named; a tampered bundle is refused while the old version keeps serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgeops.agent.client import AgentClient
from edgeops.protocol import cmd_topic
from tests.agent.helpers import Listener, RepoResponder, TriggeredTraffic, agent_config_dict, stop_agent, to_toml, wait_for
from tests.agent.test_mqtt import publish
from tests.support.bundles import sample_inputs
from tests.support.broker import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVICE = "cli-dev"
TRIGGER = 100.0


def start_cli(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-m", "edgeops.cli", "agent", "run", "--config", str(config)], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


@pytest.fixture(scope="module")
def cli_agent(tmp_path_factory, mqtt_broker, trust_repo):
    tmp = tmp_path_factory.mktemp("cli")
    port = free_port()
    cfg = agent_config_dict(tmp, trust_repo, device_id=DEVICE, broker_url=mqtt_broker.url, api=f"127.0.0.1:{port}", probation={"window_count": 30, "window_seconds": 1.0}, broker={"keepalive_s": 5})
    config = tmp / "agent.toml"
    config.write_text(to_toml(cfg))
    responder = RepoResponder(mqtt_broker.url, trust_repo.repo_dir)
    listener = Listener(mqtt_broker.url, DEVICE)
    proc = start_cli(config, tmp / "agent.log")
    client = AgentClient(f"127.0.0.1:{port}", timeout=5)
    wait_for(lambda: _status(client), 30, what="agent API up")
    publish(mqtt_broker, cmd_topic(DEVICE), trust_repo.command("assign", trust_repo.v1, device_id=DEVICE))
    listener.wait_event("committed", timeout=60)
    env = {"proc": proc, "client": client, "listener": listener, "config": config, "broker": mqtt_broker, "tmp": tmp}
    yield env
    proc = env["proc"]  # the SIGKILL test replaces it with the restarted agent
    stop_agent(proc)
    responder.stop()
    listener.stop()


def _status(client):
    try:
        return client.status()
    except Exception:
        return None


def _serving_version(client) -> str | None:
    try:
        return client.health()["model"]["version"]
    except Exception:
        return None


def test_good_update_is_installed_and_served(cli_agent):
    client = cli_agent["client"]
    assert _serving_version(client) == "1.0.0"
    out = client.infer({"input": sample_inputs(2)})
    assert out["probs"].shape == (2, 4)
    status = subprocess.run([sys.executable, "-m", "edgeops.cli", "agent", "status", "--config", str(cli_agent["config"]), "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["running"] and info["state"] == "committed" and info["active"]["version"] == "1.0.0"


@pytest.mark.parametrize("variant, gate", [("nan", "nan_outputs"), ("slow", "latency_p95"), ("crash", "error_rate")])
def test_bad_update_is_rolled_back_with_the_gate_named(cli_agent, trust_repo, variant, gate):
    """Each bundle passes self-test (its fault needs live inputs) and fails in probation."""
    client, listener = cli_agent["client"], cli_agent["listener"]
    budget = 1.5 if variant == "slow" else 20.0  # the slow model's ~8 ms is 5x over a 1.5 ms budget
    pub = trust_repo.publish(f"5.0.0-{variant}", 50 + ["nan", "slow", "crash"].index(variant), variant=variant, trigger=TRIGGER, latency_p95_ms=budget)
    seen_before = len(listener.events)
    publish(cli_agent["broker"], cmd_topic(DEVICE), trust_repo.command("assign", pub, device_id=DEVICE))
    wait_for(lambda: _serving_version(client) == pub.version, 60, what=f"{pub.version} activated")
    with TriggeredTraffic(client, TRIGGER):
        rolled = wait_for(lambda: next((e for e in listener.events[seen_before:] if e["kind"] == "rolled_back"), None), 60, what="rolled_back event")
    failed = [g for g in rolled["gates"] if not g["passed"]]
    assert failed[0]["gate"] == gate, rolled
    assert failed[0]["measured"] is not None and failed[0]["threshold"] is not None
    assert rolled["target"]["version"] == pub.version
    assert any(e["kind"] == "probation_failed" for e in listener.events[seen_before:])
    wait_for(lambda: _serving_version(client) == "1.0.0", 10, what="old version serving again")
    assert client.infer({"input": sample_inputs(1)})["probs"].shape == (1, 4)


def test_tampered_bundle_is_refused_and_old_model_keeps_serving(cli_agent, trust_repo):
    client, listener = cli_agent["client"], cli_agent["listener"]
    pub = trust_repo.publish("6.0.0-tampered", 60)
    f = trust_repo.target_file(pub)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    seen_before = len(listener.events)
    publish(cli_agent["broker"], cmd_topic(DEVICE), trust_repo.command("assign", pub, device_id=DEVICE))
    rejected = wait_for(lambda: next((e for e in listener.events[seen_before:] if e["kind"] == "bundle_rejected"), None), 60, what="bundle_rejected")
    assert "HashMismatchError" in rejected["detail"]
    assert _serving_version(client) == "1.0.0"
    assert not any(e["kind"] == "activated" for e in listener.events[seen_before:])


@pytest.mark.slow
def test_sigkill_leaves_a_last_will_offline_state(cli_agent):
    """Runs last in this module: kills the CLI; the broker publishes the retained offline state."""
    listener = cli_agent["listener"]
    wait_for(lambda: listener.states and listener.states[-1]["online"], 10, what="online")
    cli_agent["proc"].send_signal(signal.SIGKILL)
    cli_agent["proc"].wait(10)
    wait_for(lambda: not listener.states[-1]["online"], 30, what="last will (keepalive 5 s)")
    # Restarted, the agent serves the committed version again at once.
    proc = start_cli(cli_agent["config"], cli_agent["tmp"] / "agent.log")
    cli_agent["proc"] = proc
    wait_for(lambda: _serving_version(cli_agent["client"]) == "1.0.0", 30, what="served after restart")
