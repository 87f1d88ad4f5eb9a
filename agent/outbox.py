"""Moves spooled messages to the broker, QoS 1, and deletes each one only on its PUBACK.

``pump()`` runs on the session's network thread while connected: it publishes the oldest
spooled messages that are not in flight, up to ``max_inflight`` at a time. ``acked(mid)``
(the session's on_publish) deletes the row. A message whose PUBACK has not come within
``resend_after_s`` (e.g. lost with a broken connection) is published again; the console
de-duplicates by sequence number, so a duplicate is harmless while a loss is not.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from edgeops.agent.session import Session
from edgeops.agent.spool import Spool


class OutboxSender:
    """Publishes spool rows and deletes them on PUBACK."""

    def __init__(self, spool: Spool, session: Session, max_inflight: int = 50, resend_after_s: float = 30.0, monotonic: Callable[[], float] = time.monotonic):
        self.spool = spool
        self.session = session
        self.max_inflight = max_inflight
        self.resend_after_s = resend_after_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._inflight: dict[int, tuple[int, float]] = {}  # mid -> (row id, sent at)
        self.published = 0
        self.acknowledged = 0

    def pump(self) -> int:
        """Publish what fits in the in-flight window; returns how many were published."""
        if not self.session.connected:
            return 0
        now = self._monotonic()
        with self._lock:
            for mid, (_, sent) in list(self._inflight.items()):
                if now - sent > self.resend_after_s:
                    del self._inflight[mid]  # forget it; the row is still spooled and goes again
            room = self.max_inflight - len(self._inflight)
            busy = {row for row, _ in self._inflight.values()}
        if room <= 0:
            return 0
        sent = 0
        for msg in self.spool.pending(limit=room, exclude=busy):
            mid = self.session.publish(msg.topic, msg.payload, qos=1)
            if mid is None:
                break
            with self._lock:
                self._inflight[mid] = (msg.id, now)
            sent += 1
        self.published += sent
        return sent

    def acked(self, mid: int) -> None:
        """PUBACK for ``mid``: delete its row."""
        with self._lock:
            entry = self._inflight.pop(mid, None)
        if entry is not None:
            self.spool.ack(entry[0])
            self.acknowledged += 1

    def inflight(self) -> int:
        """Messages published and not yet acknowledged."""
        with self._lock:
            return len(self._inflight)
