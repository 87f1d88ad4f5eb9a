"""The console's MQTT connection (paho 2.x): MQTT 5 or 3.1.1, TLS, persistent session.

``protocol = "auto"`` tries MQTT 5 and falls back to 3.1.1 when the broker refuses it (the
embedded amqtt broker). The session is persistent (clean_start/clean_session off, fixed client
id, MQTT 5 session expiry), so QoS 1 events and telemetry published while the console is down
wait in the broker. Several replicas share events, telemetry and fetch requests through
``$share/<group>/...`` subscriptions; retained state goes to every replica.

Brokers without shared subscriptions (NATS 2.9 and RabbitMQ 3.10 MQTT grant a ``$share/``
filter and then deliver nothing on it): with ``shared_group`` set, :meth:`ConsoleMqtt.start`
publishes a probe on this replica's probe topic through a shared filter and, when it does not
come back within ``SHARED_PROBE_S``, gives up ``$share`` (``shared_supported`` False, logged).
With ``ingest_under_lease`` (FleetConsole sets it with ``shared_group``) this connection then
carries no device messages: they go to one ingest session (``broker.ingest_client_id``) that the
leader replica opens with a second ``ConsoleMqtt`` and hands on with the lease
(``FleetConsole._follow_lease``); the probe comes back on its exact topic. Without it the
connection subscribes plainly, and ingest would store each (device, seq) once whatever number
of replicas received it (measured ~3x the CPU at 3 replicas; docs/benchmarks.md). Each connect
also unsubscribes the filters of the other modes, so a persistent session does not keep plain
subscriptions after ``shared_group`` was added. The probe keeps running every
``probe_interval_s`` and :attr:`ConsoleMqtt.subscription_problem` says when the telemetry
subscription stopped receiving (``edgeops.fleet.subscription_health``).

Brokers that deliver no retained message to a wildcard subscription (RabbitMQ): given
``known_devices`` (the registry's ids), :meth:`ConsoleMqtt.start` measures it with a retained
probe (``retained_wildcard``) and, where it is missing, every connect catches up on the devices'
retained state through their exact topics (``edgeops.fleet.retained_state``).

Clustered brokers: ``failover_urls`` name the other nodes. The console starts on the first node
that answers, and after a lost connection (or a failed reconnect) paho's reconnect goes to the
next one; the persistent session lives in the cluster, so it resumes there.
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable

from edgeops.errors import FleetError
from edgeops.fleet.acks import Ack
from edgeops.fleet.config import BrokerConfig
from edgeops.fleet.retained_state import probe_state_topic, retained_reaches_wildcards, sweep
from edgeops.fleet.subscription_health import SubscriptionProbe, is_probe_topic
from edgeops.protocol import PROTOCOL

log = logging.getLogger("edgeops.fleet.mqtt")

SHARED_PROBE_S = 3.0  # a broker with shared subscriptions returns the probe within this
PROBE_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 15.0


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

    from edgeops.fleet import paho_client

    # read-ahead and batched acknowledgements (fleet/paho_client.py), where this paho allows them
    cls = paho_client.FastClient if paho_client.supported() else mqtt.Client
    if protocol == "5":
        client = cls(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    else:
        client = cls(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False)
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


def probe_protocol(cfg: BrokerConfig, timeout: float = 5.0, endpoint: tuple[str, int] | None = None) -> str:
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
        client.connect(*(endpoint or (cfg.host, cfg.port)), keepalive=10, clean_start=False, properties=props)
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

    def __init__(
        self,
        cfg: BrokerConfig,
        on_device_message: Callable[..., None],
        on_fetch: Callable[[str, bytes], None] | None = None,
        probe_interval_s: float = PROBE_INTERVAL_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        known_devices: Callable[[], Iterable[str]] | None = None,
        ingest_under_lease: bool = False,
        subscribe_state: bool = True,
        on_capture: Callable[..., None] | None = None,
    ):
        self.cfg = cfg
        # on_capture(topic, payload, ack): chunks of captured samples (fleet/capture_store.py)
        self.on_capture = on_capture
        # ingest_under_lease: without $share, leave events/telemetry/fetch to the lease holder's
        # ingest session (FleetConsole) instead of every replica subscribing plainly
        self.ingest_under_lease = ingest_under_lease
        self.subscribe_state = subscribe_state
        self.on_device_message = on_device_message
        self.on_fetch = on_fetch
        self.protocol: str | None = None
        self.client = None
        self._send_acks = None  # the client's batch acknowledger (start())
        self.connected = threading.Event()
        self.connects = 0
        self._endpoints = cfg.endpoints()
        self._endpoint = 0
        # None: not known yet (or no shared_group); False: the broker lacks $share, subscribed plainly
        self.shared_supported: bool | None = None
        self.probe = SubscriptionProbe(cfg.client_id or "edgeops-console", timeout_s=probe_timeout_s, interval_s=probe_interval_s)
        self._probe_stop = threading.Event()
        self._probe_thread: threading.Thread | None = None
        # None: not measured (no known_devices); False: retained state needs the exact-topic catch-up
        self.known_devices = known_devices
        self.retained_wildcard: bool | None = None
        self.state_probe_topic = probe_state_topic(self.probe.topic)
        self._retained_seen = threading.Event()
        self.swept = 0

    @property
    def shared(self) -> bool:
        """True while events, telemetry and fetch requests come through ``$share/<group>/``."""
        return bool(self.cfg.shared_group) and self.shared_supported is not False

    @property
    def carries_ingest(self) -> bool:
        """True while this connection subscribes to events, telemetry and fetch requests."""
        return self.shared or not (self.ingest_under_lease and self.shared_supported is False)

    def _device_filters(self, shared: bool, carries: bool = True) -> list[str]:
        share = f"$share/{self.cfg.shared_group}/" if shared else ""
        filters = []
        if carries:
            filters += [f"{share}{PROTOCOL}/+/events", f"{share}{PROTOCOL}/+/telemetry"]
            if self.on_fetch is not None:
                filters.append(f"{share}{PROTOCOL}/+/fetch/req")
            if self.on_capture is not None:
                filters.append(f"{share}{PROTOCOL}/+/capture")
        if shared:  # brings this replica's probe back to it, whichever member the group picks
            filters.append(f"{share}{self.probe.topic}")
        elif not carries:  # no telemetry filter here: the probe comes back on its exact topic
            filters.append(self.probe.topic)
        return filters

    def _wanted_filters(self) -> list[str]:
        return self._device_filters(self.shared, self.carries_ingest)

    def _unwanted_filters(self) -> list[str]:
        """Device filters of the other modes: a persistent session keeps them from an earlier run."""
        every = set(self._device_filters(False, True) + self._device_filters(False, False))
        if self.cfg.shared_group:
            every |= set(self._device_filters(True, True))
        return sorted(every - set(self._wanted_filters()))

    def _topics(self) -> list[tuple[str, int]]:
        state = [(f"{PROTOCOL}/+/state", 1)] if self.subscribe_state else []
        return state + [(f, 1) for f in self._wanted_filters()]

    @property
    def subscription_problem(self) -> str | None:
        """Why the subscriptions are not receiving (see subscription_health), or None."""
        if not self.connected.is_set():
            return None  # reported as "no broker session"
        return self.probe.problem()

    def start(self, timeout: float = 15.0) -> "ConsoleMqtt":
        """Connect (choosing the protocol) and start the network thread."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._endpoint = self._first_reachable()
        self.protocol = self.cfg.protocol if self.cfg.protocol != "auto" else probe_protocol(self.cfg, endpoint=self.endpoint)
        self.client = _make_client(self.cfg, self.protocol, self.cfg.client_id)
        self._send_acks = functools.partial(self._ack_many, self.client)  # one per client: Acks group by it
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_message = self._on_message
        # QoS 1 device messages are acknowledged only once ingest stored them (see Ingestor.submit)
        self.client.manual_ack_set(True)
        kwargs: dict = {"keepalive": self.cfg.keepalive_s}
        if self.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.cfg.session_expiry_s
            kwargs.update(clean_start=False, properties=props)
        try:
            self.client.connect(*self.endpoint, **kwargs)
        except OSError as e:
            raise FleetError(f"broker {self.cfg.url}: cannot connect ({e})") from e
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.stop()
            raise FleetError(f"broker {self.cfg.url}: no successful CONNACK within {timeout}s")
        if self.cfg.shared_group:
            self._check_shared()
        if self.known_devices is not None:
            self._check_retained()
        self._probe_stop.clear()
        self._probe_thread = threading.Thread(target=self._probe_loop, name="edgeops-mqtt-probe", daemon=True)
        self._probe_thread.start()
        return self

    @property
    def endpoint(self) -> tuple[str, int]:
        """(host, port) of the broker node this console connects (or reconnects) to."""
        return self._endpoints[self._endpoint % len(self._endpoints)]

    def _first_reachable(self) -> int:
        """The first node (url, then failover_urls) that accepts a TCP connection; else the first."""
        import socket

        for i, (host, port) in enumerate(self._endpoints):
            try:
                socket.create_connection((host, port), timeout=2).close()
                return i
            except OSError:
                log.warning("broker node %s:%d does not answer; trying the next one", host, port)
        return 0

    def _check_shared(self) -> None:
        """Publish a probe through the shared filter; when it does not come back, subscribe plainly."""
        self.send_probe()
        if self.probe.wait_back(SHARED_PROBE_S):
            self.shared_supported = True
            return
        self.shared_supported = False
        if self.ingest_under_lease:
            how = "events, telemetry and fetch requests go to one ingest session, held by the leader replica"
        else:
            how = "subscribing plainly: every replica receives every device message and ingest stores each once"
        log.warning(
            "broker %s accepted $share/%s/ subscriptions but delivered nothing on them (no shared subscriptions: "
            "NATS and RabbitMQ MQTT); %s", self.cfg.url, self.cfg.shared_group, how)
        self.probe.reset()
        client = self.client
        if client is not None and self.connected.is_set():
            client.unsubscribe(self._unwanted_filters())
            client.subscribe([(f, 1) for f in self._wanted_filters()])

    def _check_retained(self) -> None:
        """Measure retained delivery to wildcards; without it, catch up on state now and on every connect."""
        self.retained_wildcard = retained_reaches_wildcards(self.client, self.state_probe_topic, self._retained_seen)
        if not self.retained_wildcard:
            log.warning(
                "broker %s delivers no retained message to wildcard subscriptions (RabbitMQ MQTT): the console "
                "catches up on device state through each enrolled device's exact state topic after every connect", self.cfg.url)
            self._start_sweep()

    def _start_sweep(self) -> None:
        threading.Thread(target=self._sweep, name="edgeops-state-sweep", daemon=True).start()

    def _sweep(self) -> None:
        client = self.client
        try:
            ids = list(self.known_devices()) if self.known_devices else []
            if client is not None and ids:
                self.swept += sweep(client, ids, self.connected.is_set)
        except Exception:  # a failed catch-up is retried on the next connect; never fatal
            log.exception("state catch-up failed")

    def send_probe(self) -> bool:
        """Publish one probe on this replica's probe topic (False when not connected)."""
        client = self.client
        if client is None or not self.connected.is_set():
            return False
        client.publish(self.probe.topic, self.probe.next_payload(), qos=1)
        return True

    def _probe_loop(self) -> None:
        while not self._probe_stop.wait(self.probe.interval_s):
            try:
                self.send_probe()
            except Exception:  # the probe must never take the console down
                log.exception("publishing the subscription probe failed")

    def _on_connect(self, client, userdata, flags, rc, props=None):
        if rc.is_failure:
            log.error("broker %s refused the connection: %s", self.cfg.url, rc)
            return
        self.connects += 1
        if self.cfg.shared_group or self.ingest_under_lease:
            # a persistent session keeps the other modes' filters: drop them, or they deliver twice
            client.unsubscribe(self._unwanted_filters())
        client.subscribe(self._topics())
        self.connected.set()
        if self.retained_wildcard is False:
            self._start_sweep()

    def _on_disconnect(self, client, userdata, flags, rc, props=None):
        self.connected.clear()
        self.probe.reset()
        if rc.is_failure:
            log.warning("disconnected from %s:%d: %s (reconnecting)", *self.endpoint, rc)
        self._failover(client)

    def _on_connect_fail(self, client, userdata):
        self._failover(client)  # a reconnect to a node that is down: the next one

    def _failover(self, client) -> None:
        if len(self._endpoints) > 1 and not self._probe_stop.is_set():
            # failover_urls: paho's reconnect goes to the next node (the session lives in the cluster)
            self._endpoint += 1
            # paho's host/port setters refuse while its reconnect loop runs (state "connection lost",
            # not "disconnected"); reconnect() reads these two attributes, so set them (paho 2.x)
            client._host, client._port = self.endpoint
            log.warning("reconnecting to broker node %s:%d", *self.endpoint)

    def _ack_many(self, client, mids: list[int]) -> None:
        """Acknowledge QoS 1 messages ``client`` received (none once it was replaced or stopped)."""
        if self.client is not client:
            return
        if hasattr(client, "ack_many"):  # fleet/paho_client.FastClient
            client.ack_many(mids)  # one packet, one wake-up of the network thread
        else:
            for mid in mids:
                client.ack(mid, 1)

    def _on_message(self, client, userdata, msg):
        qos, topic = msg.qos, "(not UTF-8)"
        if qos == 1:
            ack = Ack(self._send_acks if client is self.client else functools.partial(self._ack_many, client), msg.mid)
        else:
            mid = msg.mid

            def ack() -> None:  # QoS 0: nothing to send; QoS 2 (never subscribed): paho's PUBCOMP
                if qos > 1 and self.client is client:
                    client.ack(mid, qos)

        try:
            topic = msg.topic  # decoded once (paho decodes on every access); bytes that are not UTF-8 raise here, inside the guard
            if is_probe_topic(topic):  # a replica's probe: never device data
                if topic == self.state_probe_topic:
                    if msg.retain and msg.payload:
                        self._retained_seen.set()
                else:
                    self.probe.received(topic, msg.payload)
                ack()
            elif topic.endswith("/capture") and self.on_capture is not None:
                self.on_capture(topic, msg.payload, ack)  # acknowledged once the chunk is on disk
            elif topic.endswith("/fetch/req"):
                ack()  # a lost request is simply asked again by the device
                if self.on_fetch:
                    self.on_fetch(topic, msg.payload)
            else:
                self.on_device_message(topic, msg.payload, ack)  # ingest acknowledges a batch at once
        except Exception:  # never let a message kill the network thread
            log.exception("handling a message on %s failed", topic)
            ack()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> _Handle:
        """Publish; the handle's ``wait(timeout)`` is True once the broker acknowledged."""
        return _Handle(self.client.publish(topic, payload, qos=qos, retain=retain))

    def stop(self) -> None:
        """Disconnect cleanly (the persistent session stays on the broker).

        With shared subscriptions the session stays in the group: what the broker deals it while
        the replica restarts waits for it (a lone replica loses nothing). A replica retired for
        good should have its session removed (docs/fleet.md)."""
        self._probe_stop.set()
        if self._probe_thread is not None:
            self._probe_thread.join(5)
            self._probe_thread = None
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
        self._probe_stop.set()
        if self.client is not None:
            try:
                self.client.socket().close() if self.client.socket() else None
            except Exception:
                pass
            self.client.loop_stop()
            self.client = None
        self.connected.clear()
        time.sleep(0)
