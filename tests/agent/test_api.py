"""The local inference API and its client, over TCP loopback and a Unix socket."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from pathlib import Path

import numpy as np
import pytest

from edgeops.agent.api import InferenceServer
from edgeops.agent.config import ApiConfig
from edgeops.errors import ConfigError
from edgeops.tensors import encode_tensor
from edgeops.agent.client import AgentApiError, AgentClient
from tests.agent.helpers import wait_for
from tests.agent.test_machine import committed_v1, make_agent
from tests.support.bundles import sample_inputs


@pytest.fixture(scope="module")
def served(tmp_path_factory, trust_repo):
    tmp = tmp_path_factory.mktemp("api")
    agent, _ = committed_v1(tmp, trust_repo)
    tcp = InferenceServer(agent, "127.0.0.1:0").start()
    unix = InferenceServer(agent, f"unix:{tmp}/agent.sock").start()
    yield agent, tcp, unix
    tcp.stop()
    unix.stop()
    agent.stop()


@pytest.mark.parametrize("which", ["tcp", "unix"])
def test_json_and_raw_inference_match_the_model(served, which):
    agent, tcp, unix = served
    client = AgentClient((tcp if which == "tcp" else unix).address)
    x = sample_inputs(3)
    expected = agent.serving.runtime.run({"input": x})["probs"]
    full = client.infer_full({"input": x})
    np.testing.assert_allclose(full["outputs"]["probs"], expected, rtol=1e-6)
    assert full["model"]["version"] == "1.0.0"
    np.testing.assert_allclose(client.infer_raw(x), expected, rtol=1e-6)
    assert client.health()["model"]["sha256"] == agent.serving.sha256
    assert client.status()["state"] == "committed"


def test_every_inference_is_seen_by_the_agent(served):
    agent, tcp, _ = served
    before = agent.counters["inferences"]
    AgentClient(tcp.address).infer({"input": sample_inputs(1)})
    assert agent.counters["inferences"] == before + 1


@pytest.mark.parametrize(
    "call, status",
    [
        (lambda c: c.infer({"wrong": sample_inputs(1)}), 400),
        (lambda c: c.infer_raw(np.zeros((1, 3), np.float32)), 400),  # wrong shape: refused before the model runs
        (lambda c: c._json("POST", "/v1/infer", {"inputs": {"input": {"dtype": "float32", "shape": [1, 16], "data": "!!"}}}), 400),
        (lambda c: c._json("GET", "/v1/nothing"), 404),
    ],
)
def test_bad_requests_get_clear_errors(served, call, status):
    _, tcp, _ = served
    with pytest.raises(AgentApiError) as e:
        call(AgentClient(tcp.address))
    assert e.value.status == status


def test_health_is_503_without_a_model(tmp_path, trust_repo):
    agent = make_agent(tmp_path, trust_repo)
    server = InferenceServer(agent, "127.0.0.1:0").start()
    try:
        with pytest.raises(AgentApiError) as e:
            AgentClient(server.address).health()
        assert e.value.status == 503
        with pytest.raises(AgentApiError) as e:
            AgentClient(server.address).infer({"input": sample_inputs(1)})
        assert e.value.status == 503
    finally:
        server.stop()
        agent.stop()


# -- what the caller gets wrong is a 400 and never a model error (issue 13, finding 6) ----------
def _tensor(dtype, shape, data=b""):
    import base64

    return {"dtype": dtype, "shape": shape, "data": base64.b64encode(data).decode()}


def _nan_input():
    x = sample_inputs(1)
    x[0, 3] = np.nan
    return x


def _json_body(inputs: dict) -> bytes:
    return json.dumps({"inputs": inputs}).encode()


RAW = "application/octet-stream"
CALLER_MISTAKES = {
    "deep JSON": (b"[" * 100_000 + b"]" * 100_000, None),
    "deep JSON in a tensor": (b'{"inputs": {"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}", None),
    "not JSON": (b"\xff\xfe{", None),
    "huge JSON shape": (_json_body({"input": _tensor("float32", [2**40, 2**40])}), None),
    "zero in a huge JSON shape": (_json_body({"input": _tensor("float32", [0, 2**31 - 1, 2**31 - 1, 2**31 - 1])}), None),
    "huge raw shape": (b"", {"X-Tensor-Dtype": "float32", "X-Tensor-Shape": "1099511627776,1099511627776"}),
    "raw shape of 1000 digits": (b"", {"X-Tensor-Dtype": "float32", "X-Tensor-Shape": "9" * 1000}),
    "wrong dtype": (_json_body({"input": encode_tensor(sample_inputs(1).astype(np.float64))}), None),
    "wrong raw dtype": (np.zeros((1, 16), np.int32).tobytes(), {"X-Tensor-Dtype": "int32", "X-Tensor-Shape": "1,16"}),
    "wrong rank": (_json_body({"input": encode_tensor(np.zeros(16, np.float32))}), None),
    "wrong fixed dimension": (_json_body({"input": encode_tensor(np.zeros((1, 15), np.float32))}), None),
    "unknown extra input": (_json_body({"input": encode_tensor(sample_inputs(1)), "extra": encode_tensor(sample_inputs(1))}), None),
    "raw input name the model lacks": (sample_inputs(1).tobytes(), {"X-Tensor-Dtype": "float32", "X-Tensor-Shape": "1,16", "X-Tensor-Name": "nope"}),
    "NaN input": (_json_body({"input": encode_tensor(_nan_input())}), None),
    "Inf raw input": (np.full((1, 16), np.inf, np.float32).tobytes(), {"X-Tensor-Dtype": "float32", "X-Tensor-Shape": "1,16"}),
}


@pytest.mark.parametrize("case", list(CALLER_MISTAKES))
def test_caller_mistakes_are_400_and_not_counted_as_model_errors(served, case):
    """Deep JSON, huge shapes, another dtype/shape/name, NaN/Inf: a 400 naming the problem, the
    connection answered (not dropped), and nothing counted against the model."""
    agent, tcp, _ = served
    body, raw_headers = CALLER_MISTAKES[case]
    headers = {"Content-Type": RAW, **raw_headers} if raw_headers else {"Content-Type": "application/json"}
    errors_before, pending_before = agent.counters["inference_errors"], agent.telemetry.pending()
    status, _, answer = AgentClient(tcp.address, timeout=10)._request("POST", "/v1/infer", body, headers)
    assert status == 400, answer
    assert json.loads(answer)["error"]
    assert agent.counters["inference_errors"] == errors_before and agent.telemetry.pending() == pending_before


# -- Content-Length is required, one decimal number, under the cap, checked before reading ------
def _exchange(address: str, head: bytes, timeout: float = 10.0) -> bytes:
    """Send request headers (and no body) on a raw socket; return what the server answers
    before it closes the connection."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head)
        got = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                raise AssertionError(f"no answer within {timeout}s; got {got!r}") from None
            if not chunk:
                return got
            got += chunk


@pytest.mark.parametrize(
    "length_headers, status",
    [
        (b"Content-Length: -1\r\n", 400),
        (b"Content-Length: abc\r\n", 400),
        (b"Content-Length: 1_0\r\n", 400),
        (b"Content-Length: +10\r\n", 400),
        (b"Content-Length: 10\r\nContent-Length: 20\r\n", 400),
        (b"", 411),
        (b"Transfer-Encoding: chunked\r\n", 411),
        (b"Content-Length: 67108865\r\n", 413),
        (b"Content-Length: " + b"9" * 40 + b"\r\n", 413),
    ],
    ids=["negative", "non-numeric", "underscore", "plus", "two", "missing", "chunked", "over-cap", "40-digits"],
)
def test_content_length_is_strict_and_checked_before_the_body(served, length_headers, status):
    """The body is never sent: the answer must come from the headers alone, and the connection
    closes so no body bytes could be taken for a next request."""
    _, tcp, _ = served
    answer = _exchange(tcp.address, b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + length_headers + b"\r\n")
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
    assert b"connection: close" in answer.lower()


# -- bearer token and Unix socket permissions ---------------------------------------------------
def _token_file(path, mode=0o600, token="t0ken-" + "x" * 20):
    path.write_text(token + "\n")
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def guarded(served, tmp_path_factory):
    agent, _, _ = served
    tmp = tmp_path_factory.mktemp("guarded")
    token = _token_file(tmp / "api-token")
    settings = ApiConfig(token_file=token, socket_mode=0o600)
    tcp = InferenceServer(agent, "127.0.0.1:0", settings).start()
    unix = InferenceServer(agent, f"unix:{tmp}/agent.sock", settings).start()
    yield tcp, unix, token.read_text().strip()
    tcp.stop()
    unix.stop()


@pytest.mark.parametrize("which", ["tcp", "unix"])
def test_bearer_token_is_required(guarded, which):
    tcp, unix, token = guarded
    address = (tcp if which == "tcp" else unix).address
    for headers in ({}, {"Authorization": "Bearer wrong-token-xxxxxxxxxxxxxx"}, {"Authorization": f"Basic {token}"}, {"Authorization": f"Bearer {token}x"}):
        status, h, _ = AgentClient(address)._request("GET", "/v1/status", None, headers)
        assert status == 401 and h["www-authenticate"].startswith("Bearer")
        status, _, _ = AgentClient(address)._request("POST", "/v1/infer", _json_body({"input": encode_tensor(sample_inputs(1))}), headers)
        assert status == 401
    assert AgentClient(address, token=token).infer({"input": sample_inputs(1)})["probs"].shape == (1, 4)
    status, _, _ = AgentClient(address)._request("GET", "/v1/health", None, {"Authorization": f"bearer {token}"})  # RFC 7235: scheme is case-insensitive
    assert status == 200


def test_unix_socket_gets_its_mode_before_it_is_reachable(guarded, tmp_path):
    _, unix, _ = guarded
    path = Path(unix.address[5:])
    assert stat.S_ISSOCK(path.stat().st_mode) and oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_unix_socket_group(served, tmp_path):
    import grp

    agent, _, _ = served
    group = grp.getgrgid(os.getgid()).gr_name
    server = InferenceServer(agent, f"unix:{tmp_path}/g.sock", ApiConfig(socket_mode=0o660, socket_group=group)).start()
    try:
        st = (tmp_path / "g.sock").stat()
        assert st.st_gid == os.getgid() and oct(st.st_mode & 0o777) == "0o660"
    finally:
        server.stop()
    with pytest.raises(ConfigError, match="socket_group"):
        InferenceServer(agent, f"unix:{tmp_path}/h.sock", ApiConfig(socket_group="no-such-group-edgeops")).start()


@pytest.mark.parametrize("mode, token, match", [(0o644, "t0ken-" + "x" * 20, "every local user"), (0o600, "short", "at least 16")])
def test_unusable_token_file_is_a_config_error(served, tmp_path, mode, token, match):
    agent, _, _ = served
    path = _token_file(tmp_path / "api-token", mode, token)
    with pytest.raises(ConfigError, match=match):
        InferenceServer(agent, "127.0.0.1:0", ApiConfig(token_file=path)).start()


# -- a bounded pool: stalled connections neither add threads nor block the API for long -------
def _read_until_closed(s: socket.socket) -> bytes:
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    return got


def _stall(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    s = socket.create_connection((host, int(port)), timeout=20)
    s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\n")  # and never the rest
    return s


def _served_or_busy(client):
    try:
        return client.infer({"input": sample_inputs(1)})
    except AgentApiError as e:
        assert e.status == 503
        return None
    except ConnectionError:  # refused at once by a busy server, before the request was sent
        return None


def test_stalled_connections_are_bounded_and_timed_out(served):
    """2 workers + 1 queue slot hold the first 3 stalled connections; the next ones are answered
    503 at once without a thread each; the held ones are closed at their deadline (which
    starts at accept: time in the queue counts)."""
    agent, _, _ = served
    server = InferenceServer(agent, "127.0.0.1:0", ApiConfig(workers=2, max_queued=1, timeout_s=2.0)).start()
    threads_before = threading.active_count()
    held = [_stall(server.address) for _ in range(3)]
    try:
        host, _, port = server.address.rpartition(":")
        for _ in range(17):  # these send nothing: the answer comes at accept, before any byte
            with socket.create_connection((host, int(port)), timeout=20) as s:
                assert _read_until_closed(s).startswith(b"HTTP/1.1 503 ")
        assert threading.active_count() <= threads_before
        assert [_read_until_closed(s) for s in held] == [b""] * 3  # closed by the server at the deadline
        # the slots free up as the workers finish the closed connections (a 503 until then says "retry")
        assert wait_for(lambda: _served_or_busy(AgentClient(server.address)), 10, what="a worker free again")["probs"].shape == (1, 4)
    finally:
        for s in held:
            s.close()
        server.stop()


def test_refused_request_with_a_padded_length_is_not_read(guarded):
    """A 401 reads and drops only a small declared body; a length written with leading zeros
    is judged by its value, not by its first digits."""
    tcp, _, _ = guarded
    answer = _exchange(tcp.address, b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 0000000000000001000000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401 ") and b"connection: close" in answer.lower()


def test_expect_100_continue_comes_only_after_the_headers_passed(served):
    """A client that waits for "100 Continue" (curl does above 1 KiB) gets the refusal instead,
    and one that passes gets the 100 first, then its answer."""
    _, tcp, _ = served
    head = b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
    refused = _exchange(tcp.address, head + b"Content-Length: 67108865\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 413 ")
    body = _json_body({"input": encode_tensor(sample_inputs(1))})
    host, _, port = tcp.address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert s.recv(65536).startswith(b"HTTP/1.1 100 ")
        s.sendall(body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"probs"' in answer
