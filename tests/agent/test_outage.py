"""Broker outage: the broker is killed for 30 s while telemetry flows; after it returns the
console side has received every batch exactly once (de-duplicated by sequence number)."""

from __future__ import annotations

import time

import pytest

from edgeops.agent.config import parse_config
from edgeops.agent.core import Agent
from tests.agent.helpers import Listener, TcpGate, agent_config_dict, wait_for
from tests.support.broker import TestBroker

OUTAGE_S = 30.0


@pytest.mark.slow
def test_no_telemetry_lost_across_a_broker_outage(tmp_path, trust_repo):
    broker = TestBroker()
    broker.start()
    gate = TcpGate(broker.port)
    listener = Listener(broker.url, "outage-dev")
    cfg = parse_config(agent_config_dict(tmp_path, trust_repo, device_id="outage-dev", broker_url=gate.url, telemetry={"interval_s": 0.2}, broker={"reconnect_max_s": 1.0}))
    agent = Agent(cfg).start()
    try:
        wait_for(lambda: len(listener.telemetry) >= 3, 20, what="telemetry before the outage")
        gate.open = False  # until the console-side subscriber is back (see TcpGate)
        broker.kill()
        killed_at = agent.spool.next_seq("telemetry")
        time.sleep(OUTAGE_S)
        spooled = agent.spool.count()
        assert agent.spool.next_seq("telemetry") - killed_at >= OUTAGE_S / 0.2 * 0.5, "batches kept being produced"
        assert spooled > 50, "the spool held them during the outage"
        assert not agent.session.connected
        listener._subscribed.clear()
        broker.start()
        assert listener._subscribed.wait(30), "console-side subscriber back"
        gate.open = True
        wait_for(lambda: agent.session.connected, 30, what="agent reconnected")
        agent.config.telemetry.interval_s = 3600  # stop producing, then everything must drain
        wait_for(lambda: agent.spool.count() == 0, 60, what="spool drained")
        last = agent.spool.next_seq("telemetry")
        wait_for(lambda: len(listener.telemetry) >= last, 30, what=f"all {last} batches at the console")
        assert sorted(listener.telemetry) == list(range(last)), "every batch, no gap"
        print(f"outage: {spooled} messages spooled, {last} batches, {listener.telemetry_received - last} duplicate deliveries de-duplicated")
    finally:
        agent.stop()
        listener.stop()
        gate.close()
        broker.stop()
