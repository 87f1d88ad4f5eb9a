"""fleet/paho_client.py against a real broker: read-ahead delivers every message intact and in
order with far fewer socket reads than messages; ack_many acknowledges exactly the ids it is
given (the broker redelivers the others to the persistent session)."""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeops.fleet import paho_client
from edgeops.fleet.paho_client import FastClient, puback_packets
from tests.support.broker import MOSQUITTO, TestBroker

TOPIC = "edgeops/v1/dev-1/telemetry"


def _count_socket_reads(monkeypatch) -> list[int]:
    """Count the reads FastClient makes of the socket (its read-ahead calls paho's own _sock_recv)."""
    reads = [0]
    plain = mqtt.Client._sock_recv

    def counted(self, bufsize):
        reads[0] += 1
        return plain(self, bufsize)

    monkeypatch.setattr(mqtt.Client, "_sock_recv", counted)
    return reads


@pytest.fixture
def broker():
    with TestBroker() as b:
        yield b


def _client(cls, client_id: str, protocol: str, manual_ack: bool):
    if protocol == "5":
        c = cls(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual_ack)
    else:
        c = cls(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False, manual_ack=manual_ack)
    c.max_inflight_messages_set(0)
    return c


def _connect(c, port: int, protocol: str, subscribe: bool = True) -> threading.Event:
    ready = threading.Event()

    def on_connect(client, userdata, flags, rc, props=None):
        if subscribe:
            client.subscribe(TOPIC, qos=1)
        else:
            ready.set()

    def on_subscribe(client, userdata, mid, rcs, props=None):
        ready.set()

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    kwargs = {}
    if protocol == "5":
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        kwargs = {"clean_start": False, "properties": props}
    c.connect("127.0.0.1", port, keepalive=30, **kwargs)
    c.loop_start()
    assert ready.wait(10)
    return ready


def _publish_all(port: int, payloads: list[bytes]) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv311)
    pub.max_inflight_messages_set(0)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = [pub.publish(TOPIC, p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(60)
    pub.disconnect()
    pub.loop_stop()


def _disconnect(c) -> None:
    """Disconnect once everything queued before the DISCONNECT was written (paho writes in order)."""
    gone = threading.Event()
    c.on_disconnect = lambda *a: gone.set()
    c.disconnect()
    assert gone.wait(10)  # loop_stop() right away could end the loop before it wrote the queue
    c.loop_stop()


def _wait_for(pred, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


protocols = pytest.mark.parametrize("protocol", ["3.1.1", pytest.param("5", marks=pytest.mark.skipif(not MOSQUITTO, reason="the embedded amqtt broker speaks MQTT 3.1.1 only"))])


def test_the_installed_paho_has_what_fast_client_builds_on():
    assert paho_client.supported()


def test_puback_packets_are_4_bytes_each_with_the_id():
    assert puback_packets([1, 0x1234, 65535]) == bytes([0x40, 2, 0, 1, 0x40, 2, 0x12, 0x34, 0x40, 2, 0xFF, 0xFF])


@protocols
def test_read_ahead_delivers_every_message_intact_and_in_order(broker, monkeypatch, protocol):
    # sizes around and across the read-ahead size, and one big enough that paho pauses inside it
    # (it stops every 100 reads of a packet); the rest small, as telemetry is
    sizes = [(i * 37) % 700 for i in range(3000)]
    sizes[500], sizes[1500], sizes[1501], sizes[2500] = 70_000, 300_000, paho_client.READ_AHEAD - 3, 7_000_000
    payloads = [(f"{i}:".encode() + bytes([i % 251]) * n) for i, n in enumerate(sizes)]
    cid = f"sub-{uuid.uuid4().hex[:6]}"
    got: list[bytes] = []
    sub = _client(FastClient, cid, protocol, manual_ack=False)
    sub.on_message = lambda c, u, m: got.append(m.payload)
    _connect(sub, broker.port, protocol)
    _disconnect(sub)
    # queued in the session while the subscriber is away: they arrive back to back on reconnect
    _publish_all(broker.port, payloads)
    reads = _count_socket_reads(monkeypatch)
    sub.on_connect = None
    sub.reconnect()
    sub.loop_start()
    try:
        assert _wait_for(lambda: len(got) >= len(payloads), 120), f"{len(got)} of {len(payloads)} received"
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert len(got) == len(payloads)
    assert all(a == b for a, b in zip(got, payloads)), "a payload arrived changed or out of order"
    # paho alone reads each packet with 3 recv calls or more
    assert reads[0] < len(payloads) / 4, reads[0]


@protocols
def test_ack_many_acknowledges_exactly_the_ids_given(broker, protocol):
    cid = f"sub-{uuid.uuid4().hex[:6]}"
    got: list[tuple[int, bytes]] = []
    sub = _client(FastClient, cid, protocol, manual_ack=True)
    sub.on_message = lambda c, u, m: got.append((m.mid, m.payload))
    _connect(sub, broker.port, protocol)
    _publish_all(broker.port, [str(i).encode() for i in range(200)])
    assert _wait_for(lambda: len(got) == 200)
    sub.ack_many([mid for mid, _ in got[:150]])
    # a round trip on the same connection: the broker reads a connection's packets in order, so
    # once the SUBACK is back it has taken the PUBACKs (a reconnect could otherwise take the session
    # over while they still wait, unread, in the old connection)
    synced = threading.Event()
    sub.on_subscribe = lambda *a: synced.set()
    sub.subscribe("edgeops/test/sync", qos=1)
    assert synced.wait(10)
    _disconnect(sub)

    again: list[bytes] = []
    sub2 = _client(FastClient, cid, protocol, manual_ack=True)
    sub2.on_message = lambda c, u, m: again.append(m.payload)
    _connect(sub2, broker.port, protocol, subscribe=False)
    try:
        assert _wait_for(lambda: len(again) >= 50, 30)
        time.sleep(1.0)  # anything more would be a redelivery of an acknowledged message
    finally:
        sub2.disconnect()
        sub2.loop_stop()
    assert sorted(again, key=int) == [str(i).encode() for i in range(150, 200)]


@pytest.mark.skipif(not MOSQUITTO, reason="the embedded amqtt broker speaks MQTT 3.1.1 only")
def test_mqtt5_publishes_with_properties_keep_them_and_the_flags_come_through(broker):
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = ("k", "v")
    props.MessageExpiryInterval = 600
    try:
        pub.publish("edgeops/v1/dev-2/state", b"retained", qos=1, retain=True).wait_for_publish(10)
        got: list = []
        sub = _client(FastClient, f"sub-{uuid.uuid4().hex[:6]}", "5", manual_ack=False)
        sub.on_message = lambda c, u, m: got.append((m.topic, m.payload, m.qos, m.retain, m.properties))
        sub.on_connect = lambda c, *a: c.subscribe([(TOPIC, 1), ("edgeops/v1/dev-2/state", 1)])
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        assert _wait_for(lambda: len(got) == 1, 10)
        pub.publish(TOPIC, b"with", qos=1, properties=props).wait_for_publish(10)
        pub.publish(TOPIC, b"without", qos=1).wait_for_publish(10)
        pub.publish(TOPIC, b"qos0", qos=0).wait_for_publish(10)
        assert _wait_for(lambda: len(got) == 4, 10)
        sub.disconnect()
        sub.loop_stop()
    finally:
        pub.disconnect()
        pub.loop_stop()
    (t0, p0, q0, r0, _), (t1, p1, q1, r1, props1), (t2, p2, q2, r2, props2), (t3, p3, q3, r3, _) = got
    assert (t0, p0, q0, r0) == ("edgeops/v1/dev-2/state", b"retained", 1, True)
    assert (t1, p1, q1, r1) == (TOPIC, b"with", 1, False) and props1.UserProperty == [("k", "v")] and 0 < props1.MessageExpiryInterval <= 600
    assert (t2, p2, q2, r2) == (TOPIC, b"without", 1, False) and props2.json() == {}
    assert (t3, p3, q3, r3) == (TOPIC, b"qos0", 0, False)
