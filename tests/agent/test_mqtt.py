"""The agent against a real mosquitto: updates fetched over MQTT (resumable), retained state,
events, and malformed messages counted and dropped. MQTT 5 and 3.1.1."""

from __future__ import annotations

import json

import paho.mqtt.client as mqtt
import pytest

from edgeops.agent.config import parse_config
from edgeops.agent.core import Agent
from edgeops.agent.session import backoff_delay
from edgeops.protocol import cmd_topic, fetch_response_topic
from tests.agent.helpers import Listener, RepoResponder, agent_config_dict, wait_for


def publish(broker, topic: str, payload: bytes) -> None:
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    c.publish(topic, payload, qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


@pytest.mark.parametrize("version", ["5", "3.1.1"])
def test_update_over_mqtt_with_lost_requests(tmp_path, mqtt_broker, trust_repo, version):
    device = f"mq-{version.replace('.', '')}"
    responder = RepoResponder(mqtt_broker.url, trust_repo.repo_dir, mqtt_version=version, drop_first=2)
    listener = Listener(mqtt_broker.url, device)
    cfg = parse_config(agent_config_dict(tmp_path, trust_repo, device_id=device, broker_url=mqtt_broker.url, mqtt_version=version, trust={"fetch_timeout_s": 0.5}))
    agent = Agent(cfg).start()
    try:
        assert agent.session.wait_connected(10)
        publish(mqtt_broker, cmd_topic(device), trust_repo.command("assign", trust_repo.v1, device_id=device))
        listener.wait_event("committed", timeout=60)
        assert agent.transport.retries >= 2, "dropped requests were asked again from the same offset"
        kinds = listener.event_kinds()
        assert kinds[kinds.index("command_accepted"):kinds.index("committed") + 1] == ["command_accepted", "installed", "self_test_passed", "activated", "probation_passed", "committed"]
        state = wait_for(lambda: [s for s in listener.states if s["state"] == "committed" and s["active"]], 10, what="retained committed state")[-1]
        assert state["online"] and state["active"]["version"] == "1.0.0"
        # Telemetry arrives with gap-free sequence numbers.
        wait_for(lambda: len(listener.telemetry) >= 2, 10, what="telemetry")
        seqs = sorted(listener.telemetry)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        agent.stop()
        responder.stop()
        listener.stop()


def test_malformed_messages_are_counted_and_dropped(tmp_path, mqtt_broker, trust_repo):
    device = "mq-bad"
    cfg = parse_config(agent_config_dict(tmp_path, trust_repo, device_id=device, broker_url=mqtt_broker.url))
    agent = Agent(cfg).start()
    try:
        assert agent.session.wait_connected(10)
        publish(mqtt_broker, cmd_topic(device), b"\x00garbage")
        publish(mqtt_broker, cmd_topic(device), json.dumps({"device_id": device, "kind": "assign"}).encode())  # unsigned
        publish(mqtt_broker, fetch_response_topic(device), b"\x00\x00\x00\xffnope")
        wait_for(lambda: agent.counters["rejected_messages"] == 3, 10, what="3 rejected messages")
        assert agent.persisted.state.value == "idle" and agent._thread.is_alive() and agent.session.connected
    finally:
        agent.stop()


def test_last_will_and_clean_stop_mark_the_device_offline(tmp_path, mqtt_broker, trust_repo):
    device = "mq-lwt"
    listener = Listener(mqtt_broker.url, device)
    cfg = parse_config(agent_config_dict(tmp_path, trust_repo, device_id=device, broker_url=mqtt_broker.url))
    agent = Agent(cfg).start()
    wait_for(lambda: any(s["online"] for s in listener.states), 10, what="online state")
    agent.stop()
    wait_for(lambda: not listener.states[-1]["online"], 10, what="offline state")
    listener.stop()


def test_backoff_is_capped_exponential_with_jitter():
    import random

    rng = random.Random(1)
    delays = [backoff_delay(a, 0.5, 8.0, rng) for a in range(10)]
    assert all(0.25 <= d <= 8.0 for d in delays)
    assert delays[0] <= 0.5 and all(4.0 <= d <= 8.0 for d in delays[5:])
    assert len({round(d, 6) for d in delays[5:]}) == 5, "jitter: capped delays differ"


def test_auto_protocol_falls_back_to_311_only_when_the_broker_refuses_5():
    from edgeops.agent.session import CLOSES_BEFORE_FALLBACK, UNSUPPORTED_PROTOCOL_VERSION, ProtocolChoice

    # NATS answers CONNACK "Unsupported protocol version": 3.1.1 at once
    nats = ProtocolChoice("auto")
    assert nats.version == "5" and nats.outcome(UNSUPPORTED_PROTOCOL_VERSION) and nats.version == "3.1.1"
    assert not nats.outcome(None) and nats.version == "3.1.1", "no way back to 5 within the process"
    # RabbitMQ 3.10 closes the connection without a CONNACK: 3.1.1 after a few in a row
    rabbit = ProtocolChoice("auto")
    results = [rabbit.outcome(None) for _ in range(CLOSES_BEFORE_FALLBACK)]
    assert results == [False] * (CLOSES_BEFORE_FALLBACK - 1) + [True] and rabbit.version == "3.1.1"
    # any other CONNACK (success, bad credentials) proves the broker speaks 5: the count restarts
    flaky = ProtocolChoice("auto")
    for _ in range(5):
        assert not flaky.outcome(None) and not flaky.outcome(0) and not flaky.outcome(135)
    assert flaky.version == "5"
    # a pinned version never changes
    pinned = ProtocolChoice("5")
    assert not pinned.outcome(UNSUPPORTED_PROTOCOL_VERSION) and pinned.version == "5"
    assert ProtocolChoice("3.1.1").version == "3.1.1"
