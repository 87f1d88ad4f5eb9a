"""An agent serving OpenVINO bundles end to end, as it serves onnxruntime ones: the real CLI agent
against a real mosquitto installs an OpenVINO v1 (self-test in OpenVINO), serves it through the
inference API, takes a v2 whose fault shows only on live inputs, catches it in probation (NaN
outputs, with the old OpenVINO model as the shadow) and rolls back to v1, which serves again."""

from __future__ import annotations

import importlib.util

import pytest

from edgeops.agent.client import AgentClient
from edgeops.protocol import cmd_topic
from tests.agent.helpers import Listener, RepoResponder, TriggeredTraffic, agent_config_dict, stop_agent, to_toml, wait_for
from tests.agent.test_e2e_cli import _status, start_cli
from tests.agent.test_mqtt import publish
from tests.support.broker import free_port
from tests.support.bundles import sample_inputs
from tests.support.openvino_bundles import PROFILE, write_openvino_test_bundle

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed (pip install 'edgeops[agent,openvino]')"),
]
DEVICE = "ov-dev"
TRIGGER = 100.0


def _serving(client) -> tuple[str, str] | None:
    try:
        model = client.health()["model"]
        return model["version"], model.get("runtime", "")
    except Exception:
        return None


def test_openvino_update_rolled_back_in_probation_and_the_old_openvino_model_serves(tmp_path, mqtt_broker, trust_repo):
    v1 = trust_repo.publish_file(_bundle(tmp_path, "1.0.0-ov", 1000))
    bad = trust_repo.publish_file(_bundle(tmp_path, "2.0.0-ov-nan", 2000, variant="nan", trigger=TRIGGER))
    port = free_port()
    cfg = agent_config_dict(tmp_path, trust_repo, device_id=DEVICE, broker_url=mqtt_broker.url, api=f"127.0.0.1:{port}", profile=PROFILE,
                            probation={"window_count": 30, "window_seconds": 1.0})
    config = tmp_path / "agent.toml"
    config.write_text(to_toml(cfg))
    responder = RepoResponder(mqtt_broker.url, trust_repo.repo_dir)
    listener = Listener(mqtt_broker.url, DEVICE)
    proc = start_cli(config, tmp_path / "agent.log")
    client = AgentClient(f"127.0.0.1:{port}", timeout=5)
    try:
        wait_for(lambda: _status(client), 30, what="agent API up")
        publish(mqtt_broker, cmd_topic(DEVICE), trust_repo.command("assign", v1, device_id=DEVICE))
        listener.wait_event("committed", timeout=90)
        assert _serving(client)[0] == "1.0.0-ov"
        out = client.infer({"input": sample_inputs(2)})
        assert out["probs"].shape == (2, 4)
        status = client.status()
        assert status["active"]["version"] == "1.0.0-ov"

        seen = len(listener.events)
        publish(mqtt_broker, cmd_topic(DEVICE), trust_repo.command("assign", bad, device_id=DEVICE))
        wait_for(lambda: (_serving(client) or ("",))[0] == bad.version, 90, what=f"{bad.version} activated (self-test passed in OpenVINO)")
        with TriggeredTraffic(client, TRIGGER):
            rolled = wait_for(lambda: next((e for e in listener.events[seen:] if e["kind"] == "rolled_back"), None), 90, what="rolled_back event")
        failed = [g for g in rolled["gates"] if not g["passed"]]
        assert failed and failed[0]["gate"] == "nan_outputs", rolled
        assert rolled["target"]["version"] == bad.version
        wait_for(lambda: (_serving(client) or ("",))[0] == "1.0.0-ov", 30, what="the OpenVINO v1 serving again")
        assert client.infer({"input": sample_inputs(1)})["probs"].shape == (1, 4)
    finally:
        stop_agent(proc)
        responder.stop()
        listener.stop()


def _bundle(tmp_path, version: str, release: int, **kw):
    path = tmp_path / "bundles" / f"digits-{version}.bundle"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_openvino_test_bundle(path, version, release, **kw)
    return path
