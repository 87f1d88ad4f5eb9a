"""Is the console's telemetry subscription receiving? A self-addressed probe answers it.

A broker can accept a subscription and then deliver nothing on it (NATS 2.9 grants a
``$share/...`` filter and never matches it; an ACL may refuse a filter after a config change).
The console would see a quiet fleet and report healthy. So every ``interval_s`` the console
publishes a probe, QoS 1, on its own probe topic ``edgeops/v1/_probe-<id>/telemetry``: the
telemetry filter the console subscribes to (plain ``+`` or ``$share/<group>/``) matches it, and
with shared subscriptions a per-replica shared filter on the exact probe topic brings it back
to this replica whichever member the group picks. No device can publish there: a probe level
starts with ``_``, which no device id does (``edgeops.protocol.DEVICE_ID_PATTERN``), and the
ACL confines each device to its own subtree.

Definition: the subscriptions are *not receiving* when a probe published at least
``timeout_s`` ago has not come back and no later one has either. A probe that comes back
clears every earlier one (the path works now). Disconnects reset the count (the broker session
state is reported on its own).

The same probe, sent once right after subscribing, tells whether the broker supports shared
subscriptions at all (:meth:`ConsoleMqtt.start`, ``shared_supported``).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

from edgeops.protocol import PROTOCOL

PROBE_PREFIX = "_probe-"


def probe_topic(client_id: str) -> str:
    """This replica's probe topic (a topic level no device id can be)."""
    level = PROBE_PREFIX + hashlib.sha256(client_id.encode()).hexdigest()[:16]
    return f"{PROTOCOL}/{level}/telemetry"


def is_probe_topic(topic: str) -> bool:
    """True for any replica's probe topic (never handed to ingest)."""
    parts = topic.split("/")
    return len(parts) == 4 and parts[2].startswith(PROBE_PREFIX)


class SubscriptionProbe:
    """Tracks this replica's probes: what was sent, what came back (thread-safe)."""

    def __init__(self, client_id: str, timeout_s: float = 10.0, interval_s: float = 5.0, clock=time.monotonic):
        self.topic = probe_topic(client_id)
        self.timeout_s = timeout_s
        self.interval_s = interval_s
        self._clock = clock
        self._nonce = os.urandom(8).hex()  # a probe of an earlier process (queued in the session) is not ours
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._n = 0
        self._pending: dict[int, float] = {}  # probe number -> sent at
        self.last_back_at: float | None = None
        self.sent = 0
        self.back = 0

    def next_payload(self) -> bytes:
        """The payload of the next probe (recorded as sent now)."""
        with self._lock:
            self._n += 1
            self._pending[self._n] = self._clock()
            self.sent += 1
            return f"probe {self._nonce} {self._n}".encode()

    def received(self, topic: str, payload: bytes) -> bool:
        """Record a message on a probe topic; True when it was one of ours."""
        if topic != self.topic:
            return False
        try:
            _, nonce, n = bytes(payload).decode().split(" ")
            n = int(n)
        except (UnicodeDecodeError, ValueError):
            return False
        if nonce != self._nonce:
            return False
        with self._cond:
            if n in self._pending:
                # this probe and every earlier one: the path delivered after they were sent
                for k in [k for k in self._pending if k <= n]:
                    del self._pending[k]
                self.back += 1
                self.last_back_at = self._clock()
                self._cond.notify_all()
            return True

    def reset(self) -> None:
        """Forget outstanding probes (after a disconnect)."""
        with self._lock:
            self._pending.clear()

    def wait_back(self, timeout: float) -> bool:
        """Block until no probe is outstanding (True) or ``timeout`` passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout)

    def problem(self) -> str | None:
        """None while receiving; else why not (the /healthz reason)."""
        with self._lock:
            if not self._pending:
                return None
            oldest = min(self._pending.values())
        late = self._clock() - oldest
        if late < self.timeout_s:
            return None
        return (
            f"subscriptions not receiving: a probe published {late:.0f}s ago on {self.topic} has not come back "
            f"(limit {self.timeout_s:.0f}s); the broker accepts the console's subscriptions but delivers nothing on them"
        )
