"""The session pool against a real mosquitto: own sessions, QoS 1 acks, last will, reconnect."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from edgeops.agent.config import BrokerConfig
from edgeops.fleet.simulator.pool import SessionPool
from tests.support.broker import MOSQUITTO, TestBroker

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")

N = 40


def wait(pred, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class Observer:
    """A plain paho client on its own thread (the console's side)."""

    def __init__(self, port, topics):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"obs-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
        ready = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p=None: (topics and c.subscribe([(t, 1) for t in topics]), ready.set())
        self.c.on_message = lambda c, u, m: self._add(m)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ready.wait(10)
        time.sleep(0.2)

    def _add(self, m):
        with self.lock:
            self.messages.append((m.topic, bytes(m.payload), m.retain))

    def publish(self, topic, payload):
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def broker():
    with TestBroker() as b:
        yield b


def make_pool(broker, n=N, **kw):
    pool = SessionPool(BrokerConfig(url=broker.url, reconnect_min_s=0.1, reconnect_max_s=0.5), **kw).start()
    sessions, got, acks, connects = [], {}, {}, {}
    for i in range(n):
        dev = f"pool-{i:03d}"
        s = pool.session(dev, f'{{"device_id":"{dev}","online":false}}'.encode())
        got[dev], acks[dev], connects[dev] = [], [], [0]
        s.on_message = (lambda d: lambda kind, payload: got[d].append((kind, payload)))(dev)
        s.on_publish = (lambda d: lambda mid: acks[d].append(mid))(dev)
        s.on_connect = (lambda d: lambda: connects[d].__setitem__(0, connects[d][0] + 1))(dev)
        sessions.append(s)
    for s in sessions:
        s.start()
    wait(lambda: pool.connected_count == n, what="every session connected")
    return pool, sessions, got, acks, connects


def test_each_session_gets_only_its_own_messages_and_acks(broker):
    pool, sessions, got, acks, _ = make_pool(broker)
    obs = Observer(broker.port, ["edgeops/v1/+/telemetry"])
    try:
        time.sleep(0.3)  # subscriptions settle
        for i, s in enumerate(sessions):
            obs.publish(f"edgeops/v1/{s.device_id}/cmd", f"cmd-{i}".encode())
        wait(lambda: all(len(v) == 1 for v in got.values()), what="one command per device")
        assert all(got[s.device_id] == [("cmd", f"cmd-{i}".encode())] for i, s in enumerate(sessions))

        # publishes from other threads (the agents' tick threads) go out and are acknowledged
        mids: dict[str, list[int]] = {s.device_id: [] for s in sessions}

        def publisher(part):
            for s in part:
                for k in range(3):
                    mids[s.device_id].append(s.publish(f"edgeops/v1/{s.device_id}/telemetry", f"{s.device_id}:{k}".encode(), qos=1))

        threads = [threading.Thread(target=publisher, args=(sessions[j::4],)) for j in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(None not in v for v in mids.values())
        wait(lambda: len(obs.messages) == 3 * N, what="every telemetry message at the observer")
        wait(lambda: all(sorted(acks[d]) == sorted(mids[d]) for d in mids), what="a PUBACK for every publish")
        assert sorted(p for _, p, _ in obs.messages) == sorted(f"{s.device_id}:{k}".encode() for s in sessions for k in range(3))
    finally:
        obs.stop()
        pool.stop()


def test_kill_publishes_the_last_will_and_stop_does_not(broker):
    pool, sessions, _, _, _ = make_pool(broker, n=4)
    obs = Observer(broker.port, ["edgeops/v1/+/state"])
    try:
        sessions[0].kill()
        sessions[1].stop()
        wait(lambda: any(t == "edgeops/v1/pool-000/state" for t, _, _ in obs.messages), what="last will of the killed session")
        time.sleep(0.5)
        topics = [t for t, _, _ in obs.messages]
        assert topics == ["edgeops/v1/pool-000/state"]
        assert b'"online":false' in obs.messages[0][1]
        assert not sessions[0].connected and not sessions[1].connected
        assert sessions[0].publish("edgeops/v1/pool-000/events", b"x") is None  # offline: nothing queued
        time.sleep(1.0)
        assert not sessions[0].connected  # a killed session stays away
        assert sessions[2].connected and sessions[3].connected
    finally:
        obs.stop()
        pool.stop()


def test_sessions_reconnect_after_a_broker_restart(broker):
    pool, sessions, got, _, connects = make_pool(broker, n=10)
    try:
        broker.kill()
        wait(lambda: pool.connected_count == 0, timeout=30, what="sessions to notice the broker is gone")
        broker.start()
        wait(lambda: pool.connected_count == 10, timeout=30, what="every session to reconnect")
        assert all(c[0] >= 2 for c in connects.values())
        obs = Observer(broker.port, [])
        try:
            obs.publish("edgeops/v1/pool-003/cmd", b"after-restart")  # subscriptions renewed on reconnect
            wait(lambda: got["pool-003"] == [("cmd", b"after-restart")], what="a command after the restart")
        finally:
            obs.stop()
    finally:
        pool.stop()


def test_connects_are_paced(broker):
    t0 = time.monotonic()
    pool, _, _, _, _ = make_pool(broker, n=30, connect_rate=100.0)
    try:
        assert pool.stats["connect_attempts"] == 30
        assert time.monotonic() - t0 >= 0.15  # ~30 at 100/s with a burst of 11
    finally:
        pool.stop()


@pytest.mark.parametrize("keepalive,slices", [(60, 5), (8, 2)])
def test_loop_misc_visits_every_session_once_per_period(keepalive, slices):
    """Keepalive bookkeeping is spread: one slice per second, every session at least once per period."""
    pool = SessionPool(BrokerConfig(url="mqtt://127.0.0.1:1", keepalive_s=keepalive))  # never started: no I/O
    try:
        sessions = [pool.session(f"misc-{i:02d}", b"") for i in range(12)]
        assert pool.misc_period_s() == min(5.0, keepalive / 4)
        seen = [s.device_id for _ in range(slices) for s in pool.misc_slice()]
        # within one period every session's turn comes (once, or twice when slices round up)
        assert set(seen) == {s.device_id for s in sessions} and max(seen.count(d) for d in set(seen)) <= 2
        assert len(seen) < 2 * len(sessions)  # not every session every second
    finally:
        pool._sel.close()
        pool._wake_r.close()
        pool._wake_w.close()


def test_auto_falls_back_to_311_per_session_on_a_broker_without_mqtt5():
    """NATS answers MQTT 5 with "Unsupported protocol version": each pooled session goes on with 3.1.1."""
    from tests.fleet.brokers import NatsBroker

    if NatsBroker.missing():
        pytest.skip(NatsBroker.missing())
    nats = NatsBroker().start()
    pool = SessionPool(BrokerConfig(url=nats.url, mqtt_version="auto", reconnect_min_s=0.1, reconnect_max_s=0.5)).start()
    try:
        sessions = [pool.session(f"auto-{i}", b"offline") for i in range(3)]
        for s in sessions:
            s.start()
        wait(lambda: pool.connected_count == 3, 30, "sessions connected")
        assert all(s.protocol.version == "3.1.1" for s in sessions)
    finally:
        pool.stop()
        nats.stop()
