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

Errors are JSON ``{"error": "..."}``: 400 bad input, 404 unknown path, 413 body too large,
503 no model, 500 the model failed.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgeops.errors import DataError
from edgeops.tensors import ALLOWED_DTYPES, decode_tensor, encode_tensor

from edgeops.agent.runtimes import InferenceError

if TYPE_CHECKING:  # pragma: no cover
    from edgeops.agent.core import Agent

MAX_BODY_BYTES = 64 << 20


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

    def _send(self, code: int, body: bytes, content_type: str = "application/json", headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj) -> None:
        self._send(code, json.dumps(obj).encode())

    def do_GET(self) -> None:
        if self.path == "/v1/health":
            model = self.agent.serving
            if model is None:
                return self._json(503, {"ok": False, "state": self.agent.persisted.state.value, "error": "no verified model is being served"})
            return self._json(200, {"ok": True, "state": self.agent.persisted.state.value, "model": model.ref().to_dict()})
        if self.path == "/v1/status":
            return self._json(200, self.agent.status())
        self._json(404, {"error": f"no such endpoint {self.path}; use /v1/infer, /v1/health or /v1/status"})

    def do_POST(self) -> None:
        from edgeops.agent.core import BadInputError, NoModelError

        if self.path != "/v1/infer":
            return self._json(404, {"error": f"no such endpoint {self.path}; POST /v1/infer"})
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return self._json(400, {"error": "bad Content-Length"})
        if length > MAX_BODY_BYTES:
            return self._json(413, {"error": f"body of {length} bytes is over the {MAX_BODY_BYTES} limit"})
        body = self.rfile.read(length)
        raw = self.headers.get("Content-Type", "").startswith("application/octet-stream")
        try:
            inputs = self._raw_inputs(body) if raw else self._json_inputs(body)
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
                return self._json(400, {"error": f"no output {name!r}; outputs are {', '.join(outputs)}"})
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
        except ValueError as e:
            raise DataError(f"request body is not JSON: {e}") from e
        if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
            raise DataError('request body must be {"inputs": {name: {dtype, shape, data}}}')
        return {k: decode_tensor(v, f"input {k}") for k, v in doc["inputs"].items()}

    def _raw_inputs(self, body: bytes) -> dict[str, np.ndarray]:
        dtype = self.headers.get("X-Tensor-Dtype", "")
        if dtype not in ALLOWED_DTYPES:
            raise DataError(f"X-Tensor-Dtype {dtype!r} is not one of {', '.join(ALLOWED_DTYPES)}")
        try:
            shape = [int(d) for d in self.headers.get("X-Tensor-Shape", "").split(",") if d.strip()]
        except ValueError as e:
            raise DataError("X-Tensor-Shape must be comma-separated integers, e.g. 1,16") from e
        dt = np.dtype(dtype).newbyteorder("<")
        if int(np.prod(shape, dtype=np.int64)) * dt.itemsize != len(body):
            raise DataError(f"{len(body)} body bytes do not fit dtype {dtype} and shape {shape}")
        model = self.agent.serving
        name = self.headers.get("X-Tensor-Name") or (model.manifest.inputs[0].name if model and model.manifest.inputs else "input")
        return {name: np.frombuffer(body, dtype=dt).astype(np.dtype(dtype)).reshape(shape)}


class _TcpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)


class InferenceServer:
    """Serves the API for one agent on ``listen`` (``host:port`` or ``unix:/path``)."""

    def __init__(self, agent: "Agent", listen: str):
        self.agent = agent
        self.listen = listen
        self._server = None
        self._thread: threading.Thread | None = None

    def start(self) -> "InferenceServer":
        """Bind and serve on a background thread."""
        if self.listen.startswith("unix:"):
            path = Path(self.listen[5:])
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() or path.is_symlink():
                path.unlink()  # a stale socket of an earlier run
            server = _UnixServer(str(path), _Handler)
            os.chmod(path, 0o660)
        else:
            host, _, port = self.listen.rpartition(":")
            host = host.strip("[]")
            cls = _TcpServer
            if ":" in host:
                cls = type("_Tcp6Server", (_TcpServer,), {"address_family": socket.AF_INET6})
            server = cls((host, int(port)), _Handler)
        server.agent = self.agent  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=f"api-{self.agent.device_id}", daemon=True)
        self._thread.start()
        return self

    @property
    def address(self) -> str:
        """``host:port`` (with the real port when 0 was asked) or ``unix:/path``."""
        if self.listen.startswith("unix:"):
            return self.listen
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            if self.listen.startswith("unix:"):
                Path(self.listen[5:]).unlink(missing_ok=True)
