"""The local inference API: HTTP on loopback or on a Unix socket (standard library only).

Applications call the agent instead of loading the model themselves, so the agent sees every
inference (telemetry, probation gates, shadow runs) and can swap versions underneath.

    POST /v1/infer    JSON ``{"inputs": {name: tensor}}`` (tensors as in edgeops.tensors)
                      -> ``{"outputs": {name: tensor}, "model": {name, version, release, sha256}}``
                      or a raw body: ``Content-Type: application/octet-stream`` with headers
                      ``X-Tensor-Dtype``, ``X-Tensor-Shape`` (e.g. ``1,16``) and optional
                      ``X-Tensor-Name`` (default: the model's first input) -> the first output
                      raw, with the same headers describing it (``X-Output`` picks another one)
    GET  /v1/health   200 ``{"ok": true, "model": ...}`` when a verified model is served, else 503
    GET  /v1/status   the agent's status (state, versions, spool, counters)

Errors are JSON ``{"error": "..."}``: 400 bad input (malformed JSON or tensor, an input the
model does not take: name, dtype, shape, NaN/Inf), 401 no or wrong bearer token, 404 unknown
path, 411 no Content-Length, 413 body too large, 503 no model or every worker busy, 500 the
model failed. Only a 500 from the runtime counts as a model error (telemetry, probation);
what the caller got wrong is refused before the model runs (:mod:`edgeops.agent.inputs`).

Who may call (``[api]``, see :class:`edgeops.agent.config.ApiConfig`): a bearer token from
``token_file`` compared in constant time, and/or the Unix socket's mode and group (the socket
is bound under a temporary name, given its mode and group, then renamed into place, so it is
never reachable with looser permissions).

Bounds: ``Content-Length`` is required, one decimal number, at most ``max_body_bytes``, checked
before a byte of the body is read; the bodies read at once share that same budget, so
concurrent uploads cannot multiply it. Each connection has a socket timeout and a deadline of
``timeout_s`` per request (a connection that trickles bytes is shut down when it passes);
``workers`` threads serve connections from a queue of at most ``max_queued``; a connection
beyond that is answered 503 at once and closed (no thread per connection).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import secrets
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeops.errors import ConfigError, DataError
from edgeops.tensors import ALLOWED_DTYPES, decode_tensor, encode_tensor, from_little_endian, tensor_nbytes

from edgeops.agent.config import ApiConfig
from edgeops.agent.inputs import BadInputError
from edgeops.agent.runtimes import InferenceError

if TYPE_CHECKING:  # pragma: no cover
    from edgeops.agent.core import Agent

log = logging.getLogger("edgeops.agent.api")

MAX_BODY_BYTES = ApiConfig().max_body_bytes  # the default cap (api.max_body_bytes)
MIN_TOKEN_CHARS = 16
DRAIN_BYTES = 64 << 10  # a refused request's body up to this size is read and dropped
LINGER_BYTES, LINGER_S = 1 << 20, 1.0  # what a closing connection still reads from its client, at most
_DECIMAL = re.compile(r"[0-9]+")
_BUSY = json.dumps({"error": "the agent's API is busy (every worker and queue slot is taken); retry shortly"}).encode()


def read_token(path: Path) -> bytes:
    """The bearer token held in ``path``; ConfigError when it cannot be read, is too short, or
    the file is readable by every local user."""
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"api.token_file {path}: cannot read ({getattr(e, 'strerror', None) or e})") from e
    if mode & 0o007:
        raise ConfigError(f"api.token_file {path}: mode {oct(mode & 0o777)} lets every local user read the token; chmod 600 {path}")
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"api.token_file {path}: the token must be at least {MIN_TOKEN_CHARS} printable ASCII characters without spaces (edgeops fleet enroll writes one)")
    return token.encode()


class _ByteBudget:
    """Bytes of request bodies being read and served at once, at most ``total``."""

    def __init__(self, total: int):
        self.total = total
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, timeout: float) -> bool:
        """Reserve ``n`` bytes, waiting up to ``timeout`` seconds; False when it did not fit."""
        with self._cond:
            if self._cond.wait_for(lambda: self._used + n <= self.total, timeout):
                self._used += n
                return True
            return False

    def release(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgeops-agent"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args) -> None:  # quiet: the agent logs what matters
        pass

    def address_string(self) -> str:
        return "local"

    @property
    def agent(self) -> "Agent":
        return self.server.agent  # type: ignore[attr-defined]

    def handle_one_request(self) -> None:
        # every request (and the idle wait before it on a kept-alive connection) gets timeout_s;
        # the first one's deadline started when the connection was accepted (time in the queue counts)
        self.server.arm(self.connection, keep=True)  # type: ignore[attr-defined]
        super().handle_one_request()
        self.server.disarm(self.connection)  # type: ignore[attr-defined]

    def handle_expect_100(self) -> bool:
        # "100 Continue" is sent by _post once the headers passed (token, path, length, budget):
        # a refused client then never sends its body
        return True

    def _send(self, code: int, body: bytes, content_type: str = "application/json", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj, headers: dict[str, str] | None = None) -> None:
        self._send(code, json.dumps(obj).encode(), headers=headers)

    def _refuse(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        """An error answered before the body was read. A small body with a valid length is read
        and dropped first (closing on unread bytes resets the connection, and the client would
        lose the answer); otherwise the connection closes after the answer, so body bytes are
        never taken for the next request."""
        values = self.headers.get_all("Content-Length") or []
        text = values[0].strip() if len(values) == 1 else ""
        small = self.headers.get("Transfer-Encoding") is None and _DECIMAL.fullmatch(text) and len(text) <= 15 and int(text) <= DRAIN_BYTES
        if not (small and len(self.rfile.read(int(text))) == int(text)):
            self.close_connection = True
        self._json(code, {"error": message}, headers)

    def _authorized(self) -> bool:
        token = self.server.token  # type: ignore[attr-defined]
        if token is None:
            return True
        scheme, _, value = (self.headers.get("Authorization") or "").strip().partition(" ")
        # compare_digest: the time taken does not depend on how much of the token matched
        if scheme.lower() == "bearer" and secrets.compare_digest(value.strip().encode("utf-8", "replace"), token):
            return True
        self._refuse(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>' with the token in api.token_file", {"WWW-Authenticate": 'Bearer realm="edgeops-agent"'})
        return False

    def _guarded(self, handler) -> None:
        """Run a handler; an unexpected error is a generic 500 with the details in the log,
        never a dropped connection without an answer."""
        try:
            handler()
        except (TimeoutError, ConnectionError):
            raise  # the client is gone or too slow: nothing to answer
        except Exception:
            log.exception("inference API: unexpected error on %s %s", self.command, self.path)
            self.close_connection = True
            try:
                self._json(500, {"error": "internal error in the agent's API; see the agent log"})
            except OSError:
                pass

    def do_GET(self) -> None:
        if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0").strip() != "0":
            self.close_connection = True  # a body we do not read must not become the next request
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    def _get(self) -> None:
        if not self._authorized():
            return
        if self.path == "/v1/health":
            model = self.agent.serving
            if model is None:
                return self._json(503, {"ok": False, "state": self.agent.persisted.state.value, "error": "no verified model is being served"})
            return self._json(200, {"ok": True, "state": self.agent.persisted.state.value, "model": model.ref().to_dict()})
        if self.path == "/v1/status":
            return self._json(200, self.agent.status())
        self._json(404, {"error": "no such endpoint; use /v1/infer, /v1/health or /v1/status"})

    def _post(self) -> None:
        if not self._authorized():
            return
        if self.path != "/v1/infer":
            return self._refuse(404, "no such endpoint; POST /v1/infer")
        length = self._content_length()
        if length is None:
            return
        server = self.server
        if not server.budget.acquire(length, server.settings.timeout_s):  # type: ignore[attr-defined]
            return self._refuse(503, "the agent's API is reading other large bodies; retry shortly", {"Retry-After": "1"})
        try:
            if self.headers.get("Expect", "").strip().lower() == "100-continue":
                self.send_response_only(100)
                self.end_headers()
            body = self.rfile.read(length)
            if len(body) != length:  # the client went away, or its deadline shut the socket
                self.close_connection = True
                return
            server.disarm(self.connection)  # type: ignore[attr-defined]  # the model's run time is not the client's
            self._infer(body)
        finally:
            server.budget.release(length)  # type: ignore[attr-defined]

    def _content_length(self) -> int | None:
        """The body length, or None after answering why it is refused (before reading it)."""
        if self.headers.get("Transfer-Encoding") is not None:
            self._refuse(411, "Transfer-Encoding is not supported; send the body with a Content-Length")
            return None
        values = self.headers.get_all("Content-Length") or []
        if not values:
            self._refuse(411, "Content-Length is required")
            return None
        text = values[0].strip()
        if len(values) > 1 or not _DECIMAL.fullmatch(text):
            self._refuse(400, "Content-Length must be one non-negative decimal number")
            return None
        cap = self.server.settings.max_body_bytes  # type: ignore[attr-defined]
        length = int(text) if len(text) <= 15 else cap + 1  # int() of thousands of digits is slow
        if length > cap:
            self._refuse(413, f"body of {length} bytes is over the {cap} limit (api.max_body_bytes)")
            return None
        return length

    def _infer(self, body: bytes) -> None:
        from edgeops.agent.core import NoModelError

        raw = self.headers.get("Content-Type", "").startswith("application/octet-stream")
        try:
            inputs = self._raw_inputs(body) if raw else self._json_inputs(body)
            del body
            outputs, model = self.agent.infer(inputs)
        except (DataError, BadInputError) as e:
            return self._json(400, {"error": str(e)})
        except NoModelError as e:
            return self._json(503, {"error": str(e)})
        except InferenceError as e:
            return self._json(500, {"error": str(e)})
        ref = model.ref().to_dict()
        if raw:
            name = self.headers.get("X-Output") or next(iter(outputs))
            if name not in outputs:
                return self._json(400, {"error": f"no output {name[:100]!r}; outputs are {', '.join(outputs)}"})
            arr = np.ascontiguousarray(np.asarray(outputs[name]))
            little = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
            return self._send(200, little.tobytes(), "application/octet-stream", {"X-Tensor-Name": name, "X-Tensor-Dtype": arr.dtype.name, "X-Tensor-Shape": ",".join(str(d) for d in arr.shape), "X-Model-Version": ref["version"], "X-Model-Sha256": ref["sha256"] or ""})
        try:
            encoded = {k: encode_tensor(np.asarray(v)) for k, v in outputs.items()}
        except DataError as e:
            return self._json(500, {"error": str(e)})
        self._json(200, {"outputs": encoded, "model": ref})

    def _json_inputs(self, body: bytes) -> dict[str, np.ndarray]:
        try:
            doc = json.loads(body)
        except RecursionError as e:
            raise DataError("request body is JSON nested too deeply") from e
        except ValueError as e:
            raise DataError(f"request body is not JSON: {str(e)[:200]}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
            raise DataError('request body must be {"inputs": {name: {dtype, shape, data}}}')
        return {k: decode_tensor(v, f"input {k[:100]!r}") for k, v in doc["inputs"].items()}

    def _raw_inputs(self, body: bytes) -> dict[str, np.ndarray]:
        dtype = self.headers.get("X-Tensor-Dtype", "")
        if dtype not in ALLOWED_DTYPES:
            raise DataError(f"X-Tensor-Dtype {dtype[:40]!r} is not one of {', '.join(ALLOWED_DTYPES)}")
        dims = [d.strip() for d in self.headers.get("X-Tensor-Shape", "").split(",") if d.strip()]
        if not all(_DECIMAL.fullmatch(d) and len(d) <= 15 for d in dims):
            raise DataError("X-Tensor-Shape must be comma-separated non-negative integers, e.g. 1,16")
        shape = [int(d) for d in dims]
        expected = tensor_nbytes(dtype, shape, "X-Tensor-Shape")
        if expected != len(body):
            raise DataError(f"{len(body)} body bytes do not fit dtype {dtype} and shape {shape} ({expected} bytes)")
        model = self.agent.serving
        name = self.headers.get("X-Tensor-Name") or (model.manifest.inputs[0].name if model and model.manifest.inputs else "input")
        return {name: from_little_endian(body, dtype, shape, f"input {name[:100]!r}")}


class _WorkerPool:
    """Server mixin: ``workers`` threads serve accepted connections from a queue; at most
    ``workers + max_queued`` connections are held at once, the next ones get 503 and are
    closed by the accepting thread (a listen backlog of ``request_queue_size`` lets a burst be
    accepted and answered rather than wait in the kernel for SYN retries). Deadlines (``timeout_s`` per request) are enforced by the
    accepting thread between polls: an expired connection's socket is shut down, which ends
    the worker's blocking read."""

    request_queue_size = 128

    def setup_pool(self, agent: "Agent", settings: ApiConfig, token: bytes | None) -> None:
        self.agent = agent
        self.settings = settings
        self.token = token
        self.budget = _ByteBudget(settings.max_body_bytes)
        self._slots = threading.BoundedSemaphore(settings.workers + settings.max_queued)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._work, name=f"api-worker-{i}-{agent.device_id}", daemon=True) for i in range(settings.workers)]
        for t in self._workers:
            t.start()

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self._answer_busy(request)
            return
        request.settimeout(self.settings.timeout_s)
        self.arm(request)
        self._queue.put((request, client_address))

    def _answer_busy(self, request) -> None:
        head = f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(_BUSY)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        try:
            request.setblocking(False)
            request.send(head.encode() + _BUSY)
        except OSError:
            pass
        self.shutdown_request(request)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception as e:  # a client that went away or timed out mid-request
                log.debug("inference API connection ended: %r", e)
            finally:
                self.disarm(request)
                self._linger(request)
                self.shutdown_request(request)
                self._slots.release()

    @staticmethod
    def _linger(request) -> None:
        """Half-close, then read and drop what the client still sends (bounded: LINGER_BYTES,
        LINGER_S): closing a socket with unread bytes sends a reset, which can destroy the
        answer before the client reads it (e.g. a 400 to a body it is still sending)."""
        try:
            request.shutdown(socket.SHUT_WR)
            end = time.monotonic() + LINGER_S
            left = LINGER_BYTES
            while left > 0 and (wait := end - time.monotonic()) > 0:
                request.settimeout(wait)
                chunk = request.recv(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def arm(self, request, keep: bool = False) -> None:
        """Start the deadline of the request about to be read on ``request`` (``keep``: unless
        one is running)."""
        with self._lock:
            if not (keep and request in self._deadlines):
                self._deadlines[request] = time.monotonic() + self.settings.timeout_s

    def disarm(self, request) -> None:
        """The request has arrived: no deadline while the model runs (the socket timeout still
        bounds sending the answer)."""
        with self._lock:
            self._deadlines.pop(request, None)

    def service_actions(self) -> None:
        now = time.monotonic()
        with self._lock:
            expired = [s for s, deadline in self._deadlines.items() if deadline <= now]
            for s in expired:
                del self._deadlines[s]
        for s in expired:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed by its worker meanwhile

    def handle_error(self, request, client_address) -> None:
        log.debug("inference API: error on a connection", exc_info=True)

    def stop_pool(self) -> None:
        with self._lock:
            held = list(self._deadlines)
        for s in held:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for _ in self._workers:
            self._queue.put(None)
        for t in self._workers:
            t.join(timeout=5)


class _TcpServer(_WorkerPool, HTTPServer):
    allow_reuse_address = True


class _Tcp6Server(_TcpServer):
    address_family = socket.AF_INET6


class _UnixServer(_WorkerPool, socketserver.UnixStreamServer):
    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)


class InferenceServer:
    """Serves the API for one agent on ``listen`` (``host:port`` or ``unix:/path``), with the
    agent's ``[api]`` settings unless ``settings`` is given."""

    def __init__(self, agent: "Agent", listen: str, settings: ApiConfig | None = None):
        self.agent = agent
        self.listen = listen
        self.settings = settings or agent.config.api
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> "InferenceServer":
        """Bind and serve on a background thread (ConfigError for an unusable token file or
        socket group)."""
        s = self.settings
        token = read_token(s.token_file) if s.token_file is not None else None
        if self.listen.startswith("unix:"):
            server = self._bind_unix(Path(self.listen[5:]))
        else:
            host, _, port = self.listen.rpartition(":")
            host = host.strip("[]")
            server = (_Tcp6Server if ":" in host else _TcpServer)((host, int(port)), _Handler)
            if token is None:
                log.warning("the inference API on %s has no token: any local process can call it; set api.token_file (edgeops fleet enroll writes one) or listen on a unix socket", self.listen)
        server.setup_pool(self.agent, s, token)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"api-{self.agent.device_id}", daemon=True)
        self._thread.start()
        return self

    def _bind_unix(self, path: Path) -> _UnixServer:
        """Bind under a temporary name, set mode and group, then rename into place."""
        s = self.settings
        gid = -1
        if s.socket_group:
            import grp

            try:
                gid = grp.getgrnam(s.socket_group).gr_gid
            except KeyError as e:
                raise ConfigError(f"api.socket_group {s.socket_group!r}: no such group on this device") from e
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        server = _UnixServer(str(tmp), _Handler)
        try:
            os.chmod(tmp, s.socket_mode)
            if gid != -1:
                os.chown(tmp, -1, gid)
            os.replace(tmp, path)  # replaces a stale socket of an earlier run
        except OSError as e:
            server.server_close()
            tmp.unlink(missing_ok=True)
            raise ConfigError(f"api.listen unix:{path}: cannot set up the socket ({e.strerror or e})") from e
        return server

    @property
    def address(self) -> str:
        """``host:port`` (with the real port when 0 was asked) or ``unix:/path``."""
        if self.listen.startswith("unix:"):
            return self.listen
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def stop(self) -> None:
        """Stop serving, end the connections in progress and close the socket."""
        if self._server:
            self._server.shutdown()
            self._server.stop_pool()
            self._server.server_close()
            if self.listen.startswith("unix:"):
                Path(self.listen[5:]).unlink(missing_ok=True)
