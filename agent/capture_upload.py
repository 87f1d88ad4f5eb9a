"""Uploads sealed samples from the capture spool to the console, in chunks, QoS 1, resumable.

A sample goes as ``ceil(size / CAPTURE_CHUNK_BYTES)`` messages on ``edgeops/v1/{d}/capture``
(:func:`edgeops.protocol.encode_capture_chunk`). The console keeps the chunks it has on disk
and answers on ``capture/ack`` only after the whole sample is stored (``stored``: the device
deletes it from its spool), or with the chunk indices still ``missing`` (sent again), or
``refused`` (never storable: dropped and counted). A sample without an answer after
``resend_after_s`` (a broker outage ate chunks, the console restarted) is sent again in full;
the console writes chunks idempotently and stores a sample once under its sha256, so a
duplicate costs bandwidth, never a duplicate sample. ``pump()`` runs on the session's network
thread; at most ``max_inflight`` samples are in the air at a time.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from edgeops.protocol import CAPTURE_CHUNK_BYTES, CaptureAck, CaptureChunk, capture_topic, encode_capture_chunk, parse_message

from edgeops.agent.capture_spool import CaptureSpool


class CaptureUploader:
    """Chunked, acknowledged upload of the capture spool (see module doc)."""

    def __init__(self, spool: CaptureSpool, session, device_id: str, max_inflight: int = 2, resend_after_s: float = 30.0, chunk_bytes: int = CAPTURE_CHUNK_BYTES, monotonic: Callable[[], float] = time.monotonic):
        self.spool = spool
        self.session = session
        self.device_id = device_id
        self.max_inflight = max_inflight
        self.resend_after_s = resend_after_s
        self.chunk_bytes = min(chunk_bytes, CAPTURE_CHUNK_BYTES)
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._inflight: dict[str, float] = {}  # sample id -> when its chunks were last sent
        self._resend: dict[str, list[int]] = {}  # sample id -> chunk indices the console lacks
        self.stored = 0
        self.refused = 0
        self.chunks_sent = 0
        self.malformed_acks = 0

    def _send(self, sample_id: str, blob: bytes, indices: list[int] | None = None) -> bool:
        total = max(1, -(-len(blob) // self.chunk_bytes))
        for i in indices if indices is not None else range(total):
            if not 0 <= i < total:
                continue
            head = CaptureChunk(sample_id=sample_id, index=i, total=total, size=len(blob))
            chunk = blob[i * self.chunk_bytes : (i + 1) * self.chunk_bytes]
            if self.session.publish(capture_topic(self.device_id), encode_capture_chunk(head, chunk), qos=1) is None:
                return False  # offline: the next pump (or the resend timer) tries again
            self.chunks_sent += 1
        return True

    def reset(self) -> None:
        """Forget what is in the air (a new connection): everything waiting goes again."""
        with self._lock:
            self._inflight.clear()
            self._resend.clear()

    def pump(self) -> int:
        """Send missing chunks, resend timed-out samples and start new ones; returns samples sent."""
        if not self.session.connected or (self.spool.waiting == 0 and not self._resend):
            return 0
        now = self._monotonic()
        with self._lock:
            resend, self._resend = self._resend, {}
            for sid, sent in list(self._inflight.items()):
                if now - sent > self.resend_after_s:
                    del self._inflight[sid]
            busy = set(self._inflight)
            room = self.max_inflight - len(self._inflight)
        for sid, indices in resend.items():
            blob = self.spool.get(sid)
            if blob is not None and not self._send(sid, blob, indices):
                with self._lock:
                    self._resend[sid] = indices
                return 0
        sent = 0
        if room <= 0:
            return 0
        for s in self.spool.oldest(room, exclude=busy):
            with self._lock:
                self._inflight[s.sample_id] = now
            if not self._send(s.sample_id, s.blob):
                with self._lock:
                    self._inflight.pop(s.sample_id, None)
                break
            sent += 1
        return sent

    def handle_ack(self, payload: bytes) -> bool:
        """The console's answer on ``capture/ack``; False when malformed (the caller counts it)."""
        ack = parse_message(CaptureAck, payload)
        if ack is None:
            self.malformed_acks += 1
            return False
        if ack.status == "missing":
            with self._lock:
                self._resend[ack.sample_id] = list(ack.missing)
                self._inflight[ack.sample_id] = self._monotonic()
            return True
        removed = self.spool.remove(ack.sample_id)
        with self._lock:
            self._inflight.pop(ack.sample_id, None)
            self._resend.pop(ack.sample_id, None)
        if removed:
            if ack.status == "stored":
                self.stored += 1
            else:
                self.refused += 1
        return True

    def inflight(self) -> int:
        """Samples sent and not yet answered."""
        with self._lock:
            return len(self._inflight)
