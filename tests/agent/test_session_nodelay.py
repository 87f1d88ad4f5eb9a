"""The agent's broker connection runs with TCP_NODELAY (Nagle off): the MQTT fetch protocol is
small requests answered by large chunks, and Nagle held each request back for the broker's
delayed ACK (~40 ms per chunk window; see bench/agent.py)."""

from __future__ import annotations

import socket

from edgeops.agent.config import BrokerConfig
from edgeops.agent.session import MqttSession, set_tcp_nodelay


def test_set_tcp_nodelay_on_tcp_and_not_on_other_sockets():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert set_tcp_nodelay(client) is True
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert set_tcp_nodelay(a) is False  # a Unix socket: nothing to tune, no error
        assert set_tcp_nodelay(None) is False
    finally:
        for s in (client, server, a, b):
            s.close()


def test_session_connection_has_nodelay(mqtt_broker):
    session = MqttSession("nodelay-dev", BrokerConfig(url=mqtt_broker.url), b"{}")
    session.start()
    try:
        assert session.wait_connected(10)
        sock = session._client.socket()  # noqa: SLF001 - the socket paho opened for this session
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        session.stop()
