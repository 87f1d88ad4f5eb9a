"""The console's MQTT connection (paho 2.x): MQTT 5 or 3.1.1, TLS, persistent session.

``protocol = "auto"`` tries MQTT 5 and falls back to 3.1.1 when the broker refuses it (the
embedded amqtt broker). The session is persistent (clean_start/clean_session off, fixed client
id, MQTT 5 session expiry), so QoS 1 events and telemetry published while the console is down
wait in the broker. Several replicas share events, telemetry and fetch requests through
``$share/<group>/...`` subscriptions; retained state goes to every replica.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable

from edgeops.errors import FleetError
from edgeops.fleet.config import BrokerConfig
from edgeops.protocol import PROTOCOL

log = logging.getLogger("edgeops.fleet.mqtt")


class _Handle:
    def __init__(self, info):
        self.info = info

    def wait(self, timeout: float) -> bool:
        try:
            self.info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        return self.info.is_published()


def _make_client(cfg: BrokerConfig, protocol: str, client_id: str):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if protocol == "5":
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False)
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.resolved_password())
    if cfg.tls:
        ctx = ssl.create_default_context(cafile=cfg.ca_file)
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        client.tls_set_context(ctx)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.reconnect_delay_set(1, 30)
    return client


def probe_protocol(cfg: BrokerConfig, timeout: float = 5.0) -> str:
    """'5' when the broker accepts an MQTT 5 connection from these credentials, else '3.1.1'.

    The probe resumes the console's own session (same client id, clean_start off, same expiry)
    and acknowledges nothing: a broker that binds client ids to usernames gives any connection
    of the console's user the console's session, and a clean start there would throw away the
    events and telemetry queued for it. Unacknowledged messages are delivered again on the
    real connection. A session the probe created (none existed) is ended on its DISCONNECT, so
    probing leaves nothing behind on a broker that does not bind client ids.
    """
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = _make_client(cfg, "5", cfg.client_id)
    client.manual_ack_set(True)
    result: dict = {}
    done = threading.Event()

    def on_connect(c, u, flags, rc, props=None):
        result["rc"] = rc
        result["session_present"] = bool(getattr(flags, "session_present", False))
        done.set()

    def on_disconnect(c, u, flags, rc, props=None):
        # only a CONNACK decides: an MQTT 3.1.1 broker may just close the connection (amqtt
        # does when the CONNECT carries properties), which paho reports as a normal disconnection
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    try:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = cfg.session_expiry_s
        client.connect(cfg.host, cfg.port, keepalive=10, clean_start=False, properties=props)
    except OSError as e:
        raise FleetError(f"broker {cfg.url}: cannot connect ({e})") from e
    client.loop_start()
    done.wait(timeout)
    try:
        if result.get("rc") is not None and not result["rc"].is_failure and not result["session_present"]:
            end = Properties(PacketTypes.DISCONNECT)
            end.SessionExpiryInterval = 0
            client.disconnect(properties=end)
        else:
            client.disconnect()
    except Exception:
        pass
    client.loop_stop()
    rc = result.get("rc")
    ok = rc is not None and not getattr(rc, "is_failure", True)
    if rc is not None and getattr(rc, "is_failure", False) and getattr(rc, "value", 0) in (134, 135, 4, 5):
        raise FleetError(f"broker {cfg.url}: refused the console's credentials ({rc}); check broker.username/password")
    return "5" if ok else "3.1.1"


class ConsoleMqtt:
    """Connects, (re)subscribes on every connect, routes messages, publishes QoS 1."""

    def __init__(self, cfg: BrokerConfig, on_device_message: Callable[..., None], on_fetch: Callable[[str, bytes], None] | None = None):
        self.cfg = cfg
        self.on_device_message = on_device_message
        self.on_fetch = on_fetch
        self.protocol: str | None = None
        self.client = None
        self.connected = threading.Event()
        self.connects = 0

    def _topics(self) -> list[tuple[str, int]]:
        share = f"$share/{self.cfg.shared_group}/" if self.cfg.shared_group else ""
        topics = [(f"{PROTOCOL}/+/state", 1), (f"{share}{PROTOCOL}/+/events", 1), (f"{share}{PROTOCOL}/+/telemetry", 1)]
        if self.on_fetch is not None:
            topics.append((f"{share}{PROTOCOL}/+/fetch/req", 1))
        return topics

    def start(self, timeout: float = 15.0) -> "ConsoleMqtt":
        """Connect (choosing the protocol) and start the network thread."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.protocol = self.cfg.protocol if self.cfg.protocol != "auto" else probe_protocol(self.cfg)
        self.client = _make_client(self.cfg, self.protocol, self.cfg.client_id)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        # QoS 1 device messages are acknowledged only once ingest stored them (see Ingestor.submit)
        self.client.manual_ack_set(True)
        kwargs: dict = {"keepalive": self.cfg.keepalive_s}
        if self.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            kwargs.update(clean_start=False, properties=props)
        try:
            self.client.connect(self.cfg.host, self.cfg.port, **kwargs)
        except OSError as e:
            raise FleetError(f"broker {self.cfg.url}: cannot connect ({e})") from e
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.stop()
            raise FleetError(f"broker {self.cfg.url}: no successful CONNACK within {timeout}s")
        return self

    def _on_connect(self, client, userdata, flags, rc, props=None):
        if rc.is_failure:
            log.error("broker %s refused the connection: %s", self.cfg.url, rc)
            return
        self.connects += 1
        client.subscribe(self._topics())
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, rc, props=None):
        self.connected.clear()
        if rc.is_failure:
            log.warning("disconnected from %s: %s (reconnecting)", self.cfg.url, rc)

    def _on_message(self, client, userdata, msg):
        mid, qos = msg.mid, msg.qos

        def ack() -> None:
            if qos > 0 and self.client is client:
                client.ack(mid, qos)

        try:
            if msg.topic.endswith("/fetch/req"):
                ack()  # a lost request is simply asked again by the device
                if self.on_fetch:
                    self.on_fetch(msg.topic, msg.payload)
            else:
                self.on_device_message(msg.topic, msg.payload, ack)
        except Exception:  # never let a message kill the network thread
            log.exception("handling a message on %s failed", msg.topic)
            ack()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> _Handle:
        """Publish; the handle's ``wait(timeout)`` is True once the broker acknowledged."""
        return _Handle(self.client.publish(topic, payload, qos=qos, retain=retain))

    def stop(self) -> None:
        """Disconnect cleanly (the persistent session stays on the broker)."""
        if self.client is not None:
            try:
                self.client.disconnect()
            except Exception:
                pass
            self.client.loop_stop()
            self.client = None
        self.connected.clear()

    def kill(self) -> None:
        """Drop the connection without DISCONNECT (tests: a console that crashes)."""
        if self.client is not None:
            try:
                self.client.socket().close() if self.client.socket() else None
            except Exception:
                pass
            self.client.loop_stop()
            self.client = None
        self.connected.clear()
        time.sleep(0)
