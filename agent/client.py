"""A small Python client of the agent's local inference API (standard library + numpy).

    from edgeops.agent.client import AgentClient
    client = AgentClient("127.0.0.1:8765", token_file="/etc/edgeops/api-token")  # or "unix:/run/edgeops/agent.sock"
    outputs = client.infer({"input": x})            # dict of numpy arrays
    y = client.infer_raw(x)                         # first output, raw tensor body both ways
    client.health(); client.status()
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any

import numpy as np

from edgeops.errors import AgentError
from edgeops.tensors import decode_tensor, encode_tensor


class AgentApiError(AgentError):
    """The agent answered with an error status."""

    def __init__(self, status: int, message: str):
        super().__init__(f"agent API returned {status}: {message}")
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class AgentClient:
    """Talks to one agent at ``address`` (``host:port`` or ``unix:/path``), sending the bearer
    ``token`` (or the one in ``token_file``) when the agent's API has one (``api.token_file``)."""

    def __init__(self, address: str, timeout: float = 30.0, token: str | None = None, token_file: str | Path | None = None):
        self.address = address
        self.timeout = timeout
        if token is None and token_file is not None:
            token = Path(token_file).read_text().strip()
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}

    def _conn(self) -> http.client.HTTPConnection:
        if self.address.startswith("unix:"):
            return _UnixConnection(self.address[5:], self.timeout)
        host, _, port = self.address.rpartition(":")
        return http.client.HTTPConnection(host.strip("[]"), int(port), timeout=self.timeout)

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = self._conn()
        try:
            conn.request(method, path, body=body, headers={**self._auth, **(headers or {})})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def _json(self, method: str, path: str, doc: Any = None, ok: tuple[int, ...] = (200,)) -> dict:
        body = None if doc is None else json.dumps(doc).encode()
        status, _, raw = self._request(method, path, body, {"Content-Type": "application/json"} if body else None)
        data = json.loads(raw) if raw else {}
        if status not in ok:
            raise AgentApiError(status, data.get("error", raw.decode(errors="replace")))
        return data

    def health(self) -> dict:
        """GET /v1/health (raises AgentApiError 503 while no model is served)."""
        return self._json("GET", "/v1/health")

    def status(self) -> dict:
        """GET /v1/status."""
        return self._json("GET", "/v1/status")

    def infer_full(self, inputs: dict[str, np.ndarray]) -> dict:
        """POST /v1/infer with JSON tensors; the decoded outputs and the model that answered."""
        data = self._json("POST", "/v1/infer", {"inputs": {k: encode_tensor(np.asarray(v)) for k, v in inputs.items()}})
        return {"outputs": {k: decode_tensor(v, f"output {k}") for k, v in data["outputs"].items()}, "model": data["model"]}

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """POST /v1/infer with JSON tensors; returns the outputs."""
        return self.infer_full(inputs)["outputs"]

    def infer_raw(self, x: np.ndarray, name: str | None = None, output: str | None = None) -> np.ndarray:
        """POST /v1/infer with a raw tensor body; returns the (first, or ``output``) output."""
        x = np.ascontiguousarray(np.asarray(x))
        headers = {"Content-Type": "application/octet-stream", "X-Tensor-Dtype": x.dtype.name, "X-Tensor-Shape": ",".join(str(d) for d in x.shape)}
        if name:
            headers["X-Tensor-Name"] = name
        if output:
            headers["X-Output"] = output
        status, h, raw = self._request("POST", "/v1/infer", x.astype(x.dtype.newbyteorder("<"), copy=False).tobytes(), headers)
        if status != 200:
            try:
                message = json.loads(raw).get("error", "")
            except ValueError:
                message = raw.decode(errors="replace")
            raise AgentApiError(status, message)
        shape = [int(d) for d in h.get("x-tensor-shape", "").split(",") if d]
        dt = np.dtype(h["x-tensor-dtype"]).newbyteorder("<")
        return np.frombuffer(raw, dtype=dt).astype(np.dtype(h["x-tensor-dtype"])).reshape(shape)
