"""A :class:`edgeops.trust.transport.RepositoryTransport` over MQTT request/response.

The device publishes :class:`edgeops.protocol.FetchRequest` messages on its ``fetch/req``
topic; the console answers on ``fetch/resp`` with a header + chunk (see
``edgeops.protocol.encode_fetch_response``), correlated by ``request_id`` in the body so it
works on MQTT 3.1.1 as well as 5.

Chunked and resumable: up to ``window`` chunk requests are in flight at a time; a chunk that
does not arrive within ``chunk_timeout_s`` (broker outage, lost message, console restart) is
requested again from the same offset, until ``deadline_s`` has passed without progress. The
transfer is bounded by ``max_length``: no request goes beyond ``max_length + 1`` bytes. The
transport verifies nothing; the TUF client checks length and hashes.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

from edgeops.protocol import FETCH_CHUNK_BYTES, FetchRequest, decode_fetch_response, fetch_request_topic
from edgeops.trust.errors import NotFoundError, RepositoryUnavailableError
from edgeops.trust.transport import check_repo_path

from edgeops.agent.session import Session


class MqttTransport:
    """Fetch repository files through the broker (see module doc)."""

    def __init__(self, session: Session, device_id: str, chunk_bytes: int = FETCH_CHUNK_BYTES, chunk_timeout_s: float = 10.0, deadline_s: float = 120.0, window: int = 4):
        self.session = session
        self.device_id = device_id
        self.chunk_bytes = chunk_bytes
        self.chunk_timeout_s = chunk_timeout_s
        self.deadline_s = deadline_s
        self.window = window
        self._cond = threading.Condition()
        self._responses: dict[str, tuple] = {}
        self._waiting: set[str] = set()
        self.malformed = 0
        self.retries = 0

    def handle_response(self, payload: bytes) -> None:
        """Feed a fetch/resp payload (called from the session's message handler)."""
        decoded = decode_fetch_response(payload)
        if decoded is None:
            self.malformed += 1
            return
        header, chunk = decoded
        with self._cond:
            if header.request_id in self._waiting:
                self._responses[header.request_id] = (header, chunk)
                self._cond.notify_all()

    def _request(self, path: str, offset: int, length: int) -> str:
        rid = uuid.uuid4().hex
        with self._cond:
            self._waiting.add(rid)
        req = FetchRequest(request_id=rid, path=path, offset=offset, length=length)
        self.session.publish(fetch_request_topic(self.device_id), req.to_json().encode(), qos=1)
        return rid

    def _forget(self, rid: str) -> None:
        with self._cond:
            self._waiting.discard(rid)
            self._responses.pop(rid, None)

    def fetch(self, path: str, max_length: int) -> Iterator[bytes]:
        """Yield the file's bytes in order, at most ``max_length + 1`` bytes in total."""
        check_repo_path(path)
        return self._fetch(path, max_length)

    def _fetch(self, path: str, max_length: int) -> Iterator[bytes]:
        limit = max_length + 1
        offset = 0  # next byte to yield
        total: int | None = None
        pending: dict[int, tuple[str, float]] = {}  # chunk offset -> (request id, requested at)
        next_req = 0
        last_progress = time.monotonic()
        try:
            while offset < limit and (total is None or offset < total):
                # Keep the window full.
                while len(pending) < self.window and next_req < limit and (total is None or next_req < total):
                    length = min(self.chunk_bytes, limit - next_req)
                    pending[next_req] = (self._request(path, next_req, length), time.monotonic())
                    next_req += length
                    if total is None:
                        break  # learn the size from the first answer before asking for more
                rid, asked = pending[offset]
                with self._cond:
                    got = self._cond.wait_for(lambda: rid in self._responses, timeout=max(0.0, asked + self.chunk_timeout_s - time.monotonic()))
                    answer = self._responses.pop(rid, None) if got else None
                if answer is None:
                    if time.monotonic() - last_progress > self.deadline_s:
                        raise RepositoryUnavailableError(f"{path}: no answer from the repository over MQTT for {self.deadline_s:.0f}s (offset {offset})")
                    # Resume: ask again from this offset (the broker may have been down).
                    self.retries += 1
                    self._forget(rid)
                    length = min(self.chunk_bytes, limit - offset)
                    pending[offset] = (self._request(path, offset, length), time.monotonic())
                    continue
                self._forget(rid)
                del pending[offset]
                header, chunk = answer
                if header.status == "not_found":
                    raise NotFoundError(f"{path}: not in the repository ({header.error or 'not found'})")
                if header.status != "ok":
                    raise RepositoryUnavailableError(f"{path}: repository error: {header.error}")
                if header.offset != offset:
                    raise RepositoryUnavailableError(f"{path}: answer for offset {header.offset}, expected {offset}")
                total = header.total
                chunk = chunk[: max(0, limit - offset)]
                if chunk:
                    offset += len(chunk)
                    last_progress = time.monotonic()
                    yield chunk
                if header.eof or not chunk:
                    break
                # Requests made past the end (before the size was known) are dropped.
                for off in [o for o in pending if o >= total]:
                    self._forget(pending.pop(off)[0])
                if offset not in pending and offset < min(limit, total):
                    # A short chunk: re-align the pipeline on the byte we need next.
                    for off, (r, _) in list(pending.items()):
                        self._forget(r)
                    pending.clear()
                    next_req = offset
        finally:
            for r, _ in pending.values():
                self._forget(r)
