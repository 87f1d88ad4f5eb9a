"""A session pool: many paho MQTT clients driven by one network thread.

10,000 :class:`edgeops.agent.session.MqttSession` objects would be 10,000 threads, each
waking every 50 ms. The pool keeps every device's own MQTT session (own client id, own
subscriptions to its ``cmd`` and ``fetch/resp`` topics, own retained last will, own QoS 1
flows) but drives all of them from one thread per process with an epoll selector:

- paho's external-loop hooks (``on_socket_open/close``, ``on_socket_register_write/
  unregister_write``) keep the selector in step with each client's socket and write interest;
  readable sockets get ``loop_read``, writable ones ``loop_write``, and ``loop_misc`` runs for
  every client once a second (keepalive pings, lost-ping detection).
- ``publish`` may be called from any thread (the agents tick on worker threads): paho queues
  the packet, and the session is handed to the pool thread (a queue and a wake-up socket,
  since only the pool thread touches the selector), which writes whatever the client holds.
  Every publish from another thread queues its session, whatever paho's write-interest flag
  says (that flag is shared between threads, so a race on it could otherwise strand a
  packet); a backstop sweep re-checks ``want_write()`` of every session once a second.
- ``loop_misc`` (keepalive pings, lost-ping detection) runs for every client once per
  ``misc_period_s`` (a slice of the sessions each second), which is ample for keepalives of
  tens of seconds; 10,000 sessions do not cost 10,000 calls every second.
- Connects are paced (``connect_rate`` per second) so 10,000 devices do not hit the broker's
  listen backlog at once; a dropped connection is retried with the agent's capped exponential
  backoff with jitter (``edgeops.agent.session.backoff_delay``).
- The outbox pump (the Session protocol's ``on_loop``) runs when asked through
  :meth:`PooledSession.kick` (new spool rows, a drained in-flight window) and on connect,
  instead of after every loop iteration: polling 10,000 SQLite spools 20 times a second
  would cost more than the whole simulated fleet.

:class:`PooledSession` implements the agent's Session protocol, so ``Agent(session=...)``
runs its real code paths unchanged on it.
"""

from __future__ import annotations

import collections
import heapq
import logging
import math
import random
import selectors
import socket
import ssl
import threading
import time
from typing import Callable

from edgeops.protocol import cmd_topic, fetch_response_topic, parse_topic

from edgeops.agent.config import BrokerConfig
from edgeops.agent.session import SESSION_EXPIRY_S, ProtocolChoice, backoff_delay

log = logging.getLogger("edgeops.fleet.simulator.pool")

MISC_INTERVAL_S = 1.0  # one slice of the sessions gets loop_misc this often
MISC_PERIOD_S = 5.0  # every session gets loop_misc at least this often (capped at keepalive/4)
WRITE_SWEEP_S = 1.0  # backstop: re-check every session's want_write() this often


class PooledSession:
    """One device's MQTT session inside a :class:`SessionPool` (the agent's Session protocol)."""

    def __init__(self, pool: "SessionPool", device_id: str, will_payload: bytes, rng: random.Random | None = None):
        self.pool = pool
        self.device_id = device_id
        self.will_payload = will_payload
        self.on_message: Callable[[str, bytes], None] | None = None
        self.on_publish: Callable[[int], None] | None = None
        self.on_connect: Callable[[], None] | None = None
        self.on_loop: Callable[[], None] | None = None
        self.on_wake: Callable[[], None] | None = None  # the simulator's "tick this device soon"
        self._rng = rng or random.Random(device_id)
        self._connected = False
        self.wanted = False  # start() called and stop()/kill() not
        self.killed = False
        self.attempt = 0
        self.connects = 0
        self.connected_at = 0.0
        self.protocol = ProtocolChoice(pool.broker.mqtt_version)  # "auto" falls back per session, as the agent does
        self._connack: int | None = None
        self.client = pool._make_client(self)
        self._kicked = False
        self._write_queued = False

    # -- Session protocol ----------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the next disconnect."""
        return self._connected

    def start(self) -> None:
        """Ask the pool to connect this session (paced; returns at once)."""
        self.wanted = True
        self.pool._call(self.pool._schedule_connect, self, 0.0)

    def stop(self) -> None:
        """Disconnect cleanly (DISCONNECT: the broker does not publish the last will)."""
        self.wanted = False
        self.pool._call(self.pool._disconnect, self, True)

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT and never come back (the broker publishes the will)."""
        self.wanted = False
        self.killed = True
        self.pool._call(self.pool._disconnect, self, False)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int | None:
        """Publish when connected; the mid (PUBACK through on_publish), or None when offline."""
        import paho.mqtt.client as mqtt

        if not self._connected:
            return None
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return None
        self.pool._need_write(self)
        return info.mid

    def kick(self) -> None:
        """Ask the pool thread to run ``on_loop`` (the outbox pump) for this session soon."""
        if not self._kicked:
            self._kicked = True
            self.pool._kick(self)


class SessionPool:
    """Drives many :class:`PooledSession` objects from one thread (see module doc)."""

    def __init__(self, broker: BrokerConfig, connect_rate: float = 500.0, name: str = "sim-pool"):
        self.broker = broker
        self._password = broker.read_password()  # once for every device of the pool, not per client
        self.connect_rate = connect_rate
        self.name = name
        self.sessions: list[PooledSession] = []
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._woken = False
        self._calls: collections.deque = collections.deque()
        self._kicks: collections.deque = collections.deque()
        self._writes: collections.deque = collections.deque()  # sessions that published off the pool thread
        self._misc_at = 0  # next session index of the loop_misc rotation
        self._connect_heap: list[tuple[float, int, PooledSession]] = []
        self._heap_n = 0
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None
        self._stop = threading.Event()
        self._by_sock: dict[int, PooledSession] = {}
        self.stats = collections.Counter()
        self._tokens = 1.0
        self._tokens_at = time.monotonic()

    # -- sessions -------------------------------------------------------------------------------
    def session(self, device_id: str, will_payload: bytes, rng: random.Random | None = None) -> PooledSession:
        """A new session for ``device_id`` (not connected until its ``start()``)."""
        s = PooledSession(self, device_id, will_payload, rng)
        self.sessions.append(s)
        return s

    def _make_client(self, s: PooledSession):
        from edgeops.agent.session import device_client  # the agent's own client setup, shared

        c = device_client(self.broker, s.device_id, s.will_payload, password=self._password, version=s.protocol.version)
        c.user_data_set(s)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        return c

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> "SessionPool":
        """Start the network thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Disconnect every session cleanly and stop the thread."""
        for s in self.sessions:
            s.wanted = False
        self._call(self._disconnect_all)
        self._stop.set()
        self._wake()
        if self._thread:
            self._thread.join(timeout)
        try:
            self._sel.close()
        finally:
            self._wake_r.close()
            self._wake_w.close()

    @property
    def connected_count(self) -> int:
        """Sessions connected now."""
        return sum(1 for s in self.sessions if s._connected)

    # -- cross-thread plumbing ------------------------------------------------------------------
    def _in_pool(self) -> bool:
        return threading.get_ident() == self._thread_id

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            try:
                self._wake_w.send(b"x")
            except (BlockingIOError, OSError):
                pass

    def _call(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the pool thread (directly when already there)."""
        if self._in_pool():
            fn(*args)
        else:
            self._calls.append((fn, args))
            self._wake()

    def _kick(self, s: PooledSession) -> None:
        self._kicks.append(s)
        if not self._in_pool():
            self._wake()

    def _need_write(self, s: PooledSession) -> None:
        """After a publish: have the pool thread write what the client holds (see module doc)."""
        if self._in_pool():
            return  # paho's write-interest hook ran on this thread: the selector is in step
        if not s._write_queued:
            s._write_queued = True
            self._writes.append(s)
            self._wake()

    # -- paho socket hooks (pool thread, except register_write which may come from any) ------------
    def _on_socket_open(self, client, s: PooledSession, sock) -> None:
        self._by_sock[sock.fileno()] = s
        self._sel.register(sock, selectors.EVENT_READ, s)

    def _on_socket_close(self, client, s: PooledSession, sock) -> None:
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass

    def _on_register_write(self, client, s: PooledSession, sock) -> None:
        if self._in_pool():
            self._set_write(sock, s, True)
        else:
            self._need_write(s)

    def _on_unregister_write(self, client, s: PooledSession, sock) -> None:
        if self._in_pool():
            self._set_write(sock, s, False)

    def _set_write(self, sock, s: PooledSession, on: bool) -> None:
        try:
            self._sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0), s)
        except (KeyError, ValueError, OSError):
            pass

    def _flush_writes(self, s: PooledSession) -> None:
        c = s.client
        if c.socket() is not None and c.want_write():
            self._io(s, c.loop_write)

    def _run_writes(self) -> None:
        for _ in range(len(self._writes)):
            s = self._writes.popleft()
            s._write_queued = False  # before the write: a publish racing it queues the session again
            self._flush_writes(s)

    # -- paho callbacks (pool thread) ------------------------------------------------------------
    def _on_connect(self, client, s: PooledSession, flags, reason_code, properties=None) -> None:
        s._connack = getattr(reason_code, "value", 0)
        if reason_code.is_failure:
            self.stats["refused"] += 1
            log.warning("%s: broker refused the connection: %s", s.device_id, reason_code)
            return
        s.connects += 1
        s.connected_at = time.monotonic()
        client.subscribe([(cmd_topic(s.device_id), 1), (fetch_response_topic(s.device_id), 1)])
        s._connected = True
        self.stats["connects"] += 1
        if s.on_connect:
            self._guard(s, s.on_connect)
        s.kick()
        if s.on_wake:
            s.on_wake()

    def _on_disconnect(self, client, s: PooledSession, flags, reason_code, properties=None) -> None:
        s._connected = False

    def _on_message(self, client, s: PooledSession, msg) -> None:
        self.stats["received"] += 1
        parsed = parse_topic(msg.topic)
        if parsed is None or parsed[0] != s.device_id:
            return
        if s.on_message:
            self._guard(s, s.on_message, parsed[1], bytes(msg.payload))
        if s.on_wake:
            s.on_wake()

    def _on_publish(self, client, s: PooledSession, mid, reason_code=None, properties=None) -> None:
        if s.on_publish:
            self._guard(s, s.on_publish, mid)

    def _guard(self, s: PooledSession, fn, *args) -> None:
        # A handler bug must never kill the pool thread (and with it every device's session).
        try:
            fn(*args)
        except Exception:
            log.exception("%s: MQTT handler failed", s.device_id)

    # -- connect / disconnect (pool thread) --------------------------------------------------------
    def _schedule_connect(self, s: PooledSession, delay: float) -> None:
        self._heap_n += 1
        heapq.heappush(self._connect_heap, (time.monotonic() + delay, self._heap_n, s))

    def _connect(self, s: PooledSession) -> None:
        if not s.wanted or s._connected or s.client.socket() is not None:
            return
        s._connack = None
        try:
            if s.protocol.version == "5":
                from paho.mqtt.packettypes import PacketTypes
                from paho.mqtt.properties import Properties

                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = SESSION_EXPIRY_S
                s.client.connect(self.broker.host, self.broker.port, self.broker.keepalive_s, clean_start=False, properties=props)
            else:
                s.client.connect(self.broker.host, self.broker.port, self.broker.keepalive_s)
            self.stats["connect_attempts"] += 1
        except (OSError, ssl.SSLError, ValueError) as e:
            self.stats["connect_errors"] += 1
            self._retry(s, f"connect failed: {e}")

    def _retry(self, s: PooledSession, why: str) -> None:
        s._connected = False
        if not s.wanted:
            return
        lasted = s.connected_at and time.monotonic() - s.connected_at > 10
        s.attempt = 0 if lasted else s.attempt + 1
        s.connected_at = 0.0
        delay = backoff_delay(s.attempt, self.broker.reconnect_min_s, self.broker.reconnect_max_s, s._rng)
        log.debug("%s: %s; retry in %.2fs", s.device_id, why, delay)
        self._schedule_connect(s, delay)

    def _disconnect(self, s: PooledSession, clean: bool) -> None:
        c = s.client
        sock = c.socket()
        s._connected = False
        if sock is None:
            return
        if clean:
            try:
                c.disconnect()
                c.loop_write()
            except Exception:
                pass
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass
        # paho still holds the closed socket object; forget it so a later connect starts fresh.
        c._sock = None  # noqa: SLF001 - no public way to drop a socket without DISCONNECT

    def _disconnect_all(self) -> None:
        for s in self.sessions:
            if s.client.socket() is not None and not s.killed:
                self._disconnect(s, True)

    def _io(self, s: PooledSession, op) -> None:
        import paho.mqtt.client as mqtt

        try:
            rc = op()
        except Exception as e:  # a broken socket must not take the pool down
            log.debug("%s: I/O failed: %s", s.device_id, e)
            rc = mqtt.MQTT_ERR_CONN_LOST
        if rc != mqtt.MQTT_ERR_SUCCESS:
            if s.client.socket() is not None:
                self._disconnect(s, False)
            if s.protocol.outcome(s._connack):
                s.client = self._make_client(s)  # paho fixes the version when the client is made
            self._retry(s, f"connection lost ({mqtt.error_string(rc)})")

    # -- the loop -------------------------------------------------------------------------------
    def _run(self) -> None:
        self._thread_id = threading.get_ident()
        next_misc = time.monotonic() + MISC_INTERVAL_S
        next_sweep = time.monotonic() + WRITE_SWEEP_S
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = min(next_sweep, next_misc) - now
            if self._connect_heap:
                timeout = min(timeout, self._connect_heap[0][0] - now)
            if self._connect_heap and self._tokens < 1:
                timeout = max(timeout, min(0.01, 1.0 / self.connect_rate))
            if self._calls or self._kicks or self._writes:
                timeout = 0
            try:
                events = self._sel.select(max(0.0, timeout))
            except (OSError, ValueError):
                events = []
            for key, mask in events:
                s = key.data
                if s is None:
                    self._woken = False
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    continue
                if mask & selectors.EVENT_READ:
                    self._io(s, s.client.loop_read)
                if mask & selectors.EVENT_WRITE and s.client.socket() is not None:
                    self._io(s, s.client.loop_write)
            self._run_calls()
            self._run_writes()
            self._run_kicks()
            now = time.monotonic()
            self._run_connects(now)
            if now >= next_sweep:
                next_sweep = now + WRITE_SWEEP_S
                for s in self.sessions:
                    c = s.client
                    if c.want_write() and c.socket() is not None:
                        self._io(s, c.loop_write)
            if now >= next_misc:
                next_misc = now + MISC_INTERVAL_S
                self._run_misc_slice()
        self._run_calls()

    def misc_period_s(self) -> float:
        """How often each session gets ``loop_misc`` (keepalive pings and lost-ping checks)."""
        keepalive = self.broker.keepalive_s or 60
        return max(MISC_INTERVAL_S, min(MISC_PERIOD_S, keepalive / 4.0))

    def misc_slice(self) -> list[PooledSession]:
        """The sessions whose turn for ``loop_misc`` it is now; successive calls cycle through all."""
        n = len(self.sessions)
        if not n:
            return []
        per_slice = min(n, max(1, math.ceil(n * MISC_INTERVAL_S / self.misc_period_s())))
        start = self._misc_at % n
        self._misc_at = (start + per_slice) % n
        return [self.sessions[(start + i) % n] for i in range(per_slice)]

    def _run_misc_slice(self) -> None:
        for s in self.misc_slice():
            if s.client.socket() is not None and not s.killed:
                self._io(s, s.client.loop_misc)

    def _run_calls(self) -> None:
        while self._calls:
            fn, args = self._calls.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("session pool call %s failed", getattr(fn, "__name__", fn))

    def _run_kicks(self) -> None:
        for _ in range(len(self._kicks)):
            s = self._kicks.popleft()
            s._kicked = False
            if s._connected and s.on_loop:
                self._guard(s, s.on_loop)

    def _run_connects(self, now: float) -> None:
        # Token bucket: at most connect_rate connects per second, bursts of 1/10 s.
        self._tokens = min(self.connect_rate * 0.1 + 1, self._tokens + (now - self._tokens_at) * self.connect_rate)
        self._tokens_at = now
        while self._connect_heap and self._connect_heap[0][0] <= now and self._tokens >= 1:
            _, _, s = heapq.heappop(self._connect_heap)
            self._connect(s)
            self._tokens -= 1
