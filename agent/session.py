"""The agent's MQTT session (paho-mqtt 2.x): connect, reconnect, last will, subscriptions.

- ``broker.mqtt_version = "auto"`` (default): MQTT 5, falling back to 3.1.1 for the rest of the
  process when the broker refuses 5 (NATS answers CONNACK "Unsupported protocol version",
  RabbitMQ 3.10 closes the connection without a CONNACK; see :class:`ProtocolChoice`); "5" or
  "3.1.1" pin it. A persistent session (MQTT 5 session expiry / 3.1.1 ``clean_session=False``)
  so commands sent while the device was offline are delivered when it is back.
- TLS with a CA and optional client certificate (``mqtts://``), or username/password.
- ``broker.failover_urls`` (the other nodes of a clustered broker): after a failed or lost
  connection the next attempt goes to the next node in turn; the persistent session lives in the
  cluster, so the device resumes it on whichever node answers.
- Reconnect with capped exponential backoff and jitter, driven by this module's own network
  thread (paho's built-in reconnect has no jitter; a fleet reconnecting after a broker restart
  must not arrive in lockstep).
- Last will: a retained DeviceState with ``online=false`` on the state topic.
- Subscribes to this device's ``cmd`` and ``fetch/resp`` topics, QoS 1; incoming messages go
  to ``on_message(kind, payload)``; the agent counts and drops what does not verify.
- ``on_publish(mid)`` reports PUBACKs (QoS 1) so the outbox deletes only acknowledged messages.
- ``on_loop()`` runs on the network thread after each loop iteration while connected (the
  outbox sender pumps there, so telemetry flows even while the state machine is busy).
- TCP_NODELAY on the broker connection (paho leaves Nagle on): the MQTT fetch is small
  requests answered by large chunks, and with Nagle a request written while the last PUBACK
  is still unacknowledged waits for the broker's delayed ACK (~40 ms on Linux), once per
  chunk window. Measured by bench/agent.py: a 2 MB fetch over mosquitto took ~100-140 ms, ~10 ms
  with this and the broker's ``set_tcp_nodelay true``.

One session per agent; several sessions live in one process without shared state.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from typing import Callable, Protocol

from edgeops.protocol import capture_ack_topic, cmd_topic, fetch_response_topic, parse_topic, state_topic

from edgeops.agent.config import BrokerConfig

log = logging.getLogger("edgeops.agent.session")

SESSION_EXPIRY_S = 7 * 24 * 3600
UNSUPPORTED_PROTOCOL_VERSION = 132  # MQTT 5 CONNACK reason code
CLOSES_BEFORE_FALLBACK = 2  # connections closed without any CONNACK before "auto" tries 3.1.1


class ProtocolChoice:
    """Which MQTT version the next connection uses, for ``mqtt_version`` "auto", "5" or "3.1.1".

    "auto" starts with MQTT 5 and switches to 3.1.1 (for the rest of the process) when the
    broker answers CONNACK "Unsupported protocol version", or closes
    ``CLOSES_BEFORE_FALLBACK`` connections in a row without any CONNACK (what a 3.1.1-only
    broker such as RabbitMQ 3.10 does with a version-5 CONNECT). A CONNACK of any other kind
    (success, bad credentials) proves the broker speaks 5: the count starts again. A pinned
    version never changes.
    """

    def __init__(self, configured: str):
        self.auto = configured == "auto"
        self.version = "5" if self.auto else configured
        self._closes = 0

    def outcome(self, connack_reason: int | None) -> bool:
        """Record how one connection ended: the CONNACK reason code, or None when none came.

        True when the version just changed (the caller makes a new client for it)."""
        if not self.auto or self.version != "5":
            return False
        if connack_reason is None:
            self._closes += 1
        elif connack_reason == UNSUPPORTED_PROTOCOL_VERSION:
            self._closes = CLOSES_BEFORE_FALLBACK
        else:
            self._closes = 0
        if self._closes >= CLOSES_BEFORE_FALLBACK:
            self.version = "3.1.1"
            log.info("broker refused MQTT 5; using MQTT 3.1.1 (broker.mqtt_version = \"auto\")")
            return True
        return False


class Session(Protocol):
    """What the agent needs from a broker session (the fleet simulator may inject its own)."""

    on_message: Callable[[str, bytes], None] | None
    on_publish: Callable[[int], None] | None
    on_connect: Callable[[], None] | None
    on_loop: Callable[[], None] | None

    @property
    def connected(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int | None:
        """Publish; returns the message id (PUBACK reported through on_publish) or None when offline."""
        ...


def set_tcp_nodelay(sock) -> bool:
    """Disable Nagle's algorithm on a connected TCP (or TLS over TCP) socket; False where it does not apply."""
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # not a TCP socket (a Unix socket, a websocket wrapper)
        return False
    return True


def device_client(broker, device_id: str, will_payload: bytes, password: str | None = None, version: str | None = None):
    """A paho client configured as a device: persistent session, last will = offline state, credentials, TLS.

    ``broker`` is the agent's BrokerConfig; ``password`` defaults to ``broker.read_password()``
    (the simulator reads it once for all its devices); ``version`` ("5" or "3.1.1") defaults to
    ``broker.mqtt_version`` with "auto" read as "5". Callbacks are left to the caller.
    """
    import paho.mqtt.client as mqtt

    v5 = (version or broker.mqtt_version) in ("5", "auto")
    kwargs = {"callback_api_version": mqtt.CallbackAPIVersion.VERSION2, "client_id": device_id, "protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311}
    if not v5:
        kwargs["clean_session"] = False
    client = mqtt.Client(**kwargs)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.will_set(state_topic(device_id), will_payload, qos=1, retain=True)
    password = broker.read_password() if password is None else password
    if password is not None or broker.username:
        client.username_pw_set(broker.username or device_id, password)
    if broker.tls:
        client.tls_set(
            ca_certs=str(broker.ca_file) if broker.ca_file else None,
            certfile=str(broker.client_cert) if broker.client_cert else None,
            keyfile=str(broker.client_key) if broker.client_key else None,
            cert_reqs=ssl.CERT_REQUIRED,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return client


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Capped exponential backoff with jitter: uniform in [d/2, d], d = min(max_s, min_s * 2**attempt)."""
    d = min(max_s, min_s * (2 ** min(attempt, 30)))
    return rng.uniform(d / 2, d)


class MqttSession:
    """A paho-mqtt client on its own network thread (see module doc)."""

    def __init__(self, device_id: str, broker: BrokerConfig, will_payload: bytes, rng: random.Random | None = None):
        self.device_id = device_id
        self.broker = broker
        self.will_payload = will_payload
        self.on_message: Callable[[str, bytes], None] | None = None
        self.on_publish: Callable[[int], None] | None = None
        self.on_connect: Callable[[], None] | None = None
        self.on_loop: Callable[[], None] | None = None
        self._rng = rng or random.Random()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.protocol = ProtocolChoice(broker.mqtt_version)
        self._connack: int | None = None  # reason code of this connection's CONNACK, None until one came
        self._endpoints = broker.endpoints()
        self._endpoint = 0  # index into _endpoints of the node to connect to next
        self._client = self._make_client()
        self.connects = 0

    # -- setup -------------------------------------------------------------------------------
    def _make_client(self):
        client = device_client(self.broker, self.device_id, self.will_payload, version=self.protocol.version)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = lambda *args: self._subscribed.set()
        return client

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the next disconnect."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected and subscribed (or timeout)."""
        return self._subscribed.wait(timeout) and self._connected.is_set()

    # -- paho callbacks (network thread) -------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        self._connack = getattr(reason_code, "value", 0)
        if reason_code.is_failure:
            log.warning("%s: broker refused the connection: %s", self.device_id, reason_code)
            return
        self.connects += 1
        client.subscribe([(cmd_topic(self.device_id), 1), (fetch_response_topic(self.device_id), 1), (capture_ack_topic(self.device_id), 1)])
        self._connected.set()
        log.info("%s: connected to %s:%d", self.device_id, *self.endpoint)
        if self.on_connect:
            self._guard(self.on_connect)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        self._subscribed.clear()
        if self._connected.is_set():
            log.info("%s: disconnected (%s)", self.device_id, reason_code)
        self._connected.clear()

    def _on_message(self, client, userdata, msg) -> None:
        parsed = parse_topic(msg.topic)
        if parsed is None or parsed[0] != self.device_id:
            return
        if self.on_message:
            self._guard(self.on_message, parsed[1], bytes(msg.payload))

    def _on_publish(self, client, userdata, mid, reason_code=None, properties=None) -> None:
        if self.on_publish:
            self._guard(self.on_publish, mid)

    def _guard(self, fn, *args) -> None:
        # A handler bug must never kill the network thread (and with it every reconnect).
        try:
            fn(*args)
        except Exception:
            log.exception("%s: MQTT handler failed", self.device_id)

    # -- network thread ----------------------------------------------------------------------
    def start(self) -> None:
        """Start the network thread (connects in the background)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{self.device_id}", daemon=True)
        self._thread.start()

    def _connect_once(self) -> None:
        self._connack = None
        if self.protocol.version == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S
            self._client.connect(*self.endpoint, self.broker.keepalive_s, clean_start=False, properties=props)
        else:
            self._client.connect(*self.endpoint, self.broker.keepalive_s)

    @property
    def endpoint(self) -> tuple[str, int]:
        """(host, port) of the broker node the next connect goes to."""
        return self._endpoints[self._endpoint % len(self._endpoints)]

    def _next_endpoint(self) -> None:
        if len(self._endpoints) > 1:
            self._endpoint += 1
            log.info("%s: next connect to %s:%d (failover)", self.device_id, *self.endpoint)

    def _run(self) -> None:
        import paho.mqtt.client as mqtt

        attempt = 0
        while not self._stop.is_set():
            try:
                self._connect_once()
                set_tcp_nodelay(self._client.socket())
            except (OSError, ssl.SSLError, ValueError) as e:
                delay = backoff_delay(attempt, self.broker.reconnect_min_s, self.broker.reconnect_max_s, self._rng)
                log.debug("%s: connect to %s:%d failed (%s); retry in %.2fs", self.device_id, *self.endpoint, e, delay)
                self._next_endpoint()
                attempt += 1
                self._stop.wait(delay)
                continue
            # Connected at TCP level: loop until the connection drops.
            started = time.monotonic()
            while not self._stop.is_set():
                rc = self._client.loop(timeout=0.05)
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                if self._connected.is_set() and self.on_loop:
                    self._guard(self.on_loop)
            self._connected.clear()
            self._subscribed.clear()
            if self._stop.is_set():
                break
            self._next_endpoint()  # a node that dropped us may be going down: try the next one first
            if self.protocol.outcome(self._connack):
                self._client = self._make_client()  # paho fixes the version when the client is made
                attempt = 0
                continue
            # A connection that lasted a while resets the backoff; a refused one keeps growing it.
            attempt = 0 if time.monotonic() - started > 10 and self.connects else attempt + 1
            delay = backoff_delay(attempt, self.broker.reconnect_min_s, self.broker.reconnect_max_s, self._rng)
            self._stop.wait(delay)
        try:
            self._client.disconnect()
            self._client.loop(timeout=0.2)
        except Exception:  # best effort on shutdown
            pass

    def stop(self) -> None:
        """Disconnect cleanly (the broker then does not publish the last will)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._connected.clear()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int | None:
        """Publish when connected; returns the mid, or None when offline (nothing queued)."""
        import paho.mqtt.client as mqtt

        if not self._connected.is_set():
            return None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        return info.mid
