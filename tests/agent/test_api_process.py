"""The inference API of a real `edgeops agent run` process, probed with raw sockets (issue 13,
finding 6): a bearer token from api.token_file, Content-Length -1 refused before a byte of the
body is read, and stalled connections that cost no thread and are closed at their deadline."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import time

import pytest

from edgeops.agent.client import AgentApiError, AgentClient
from tests.agent.helpers import agent_config_dict, stop_agent, to_toml, wait_for
from tests.agent.test_e2e_cli import REPO_ROOT, start_cli
from tests.support.broker import free_port

TOKEN = "api-token-for-tests-0123456789"
API_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def agent_process(tmp_path_factory, trust_repo):
    """An agent without a broker or model: the API's gatekeeping comes before either."""
    tmp = tmp_path_factory.mktemp("api-process")
    token_file = tmp / "api-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    port = free_port()
    cfg = agent_config_dict(tmp, trust_repo, device_id="api-proc", api=f"127.0.0.1:{port}")
    # timeout_s: the stalled connections of the last test must still hold both workers and the
    # queue slot while its 40 probes run; at 2 s a loaded CI host took longer than that, the held
    # ones were closed at their deadline, and a probe got a worker (and an empty answer) instead of 503
    cfg["api"].update(token_file=str(token_file), workers=2, max_queued=1, timeout_s=API_TIMEOUT_S, max_body_bytes=1 << 20)
    config = tmp / "agent.toml"
    config.write_text(to_toml(cfg))
    proc = start_cli(config, tmp / "agent.log")
    client = AgentClient(f"127.0.0.1:{port}", timeout=5, token=TOKEN)

    def up():
        assert proc.poll() is None, (tmp / "agent.log").read_text()[-2000:]
        try:
            return client.status()
        except OSError:
            return None

    wait_for(up, 30, 0.1, "agent API up")
    yield {"proc": proc, "port": port, "client": client, "config": config}
    stop_agent(proc)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=15)


def _read_until_closed(s: socket.socket) -> bytes:
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    return got


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Threads:")).split()[1])


def test_requests_need_the_bearer_token(agent_process):
    port = agent_process["port"]
    for headers in ({}, {"Authorization": "Bearer not-the-token-xxxxxxxx"}):
        status, h, _ = AgentClient(f"127.0.0.1:{port}")._request("GET", "/v1/status", None, headers)
        assert status == 401 and h["www-authenticate"].startswith("Bearer")
    assert agent_process["client"].status()["device_id"] == "api-proc"
    # `edgeops agent status` reads the token from the same config and sees the live agent
    out = subprocess.run([sys.executable, "-m", "edgeops.cli", "agent", "status", "--config", str(agent_process["config"]), "--json"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and '"running": true' in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("authorized", [True, False])
def test_content_length_minus_one_is_refused_before_the_body(agent_process, authorized):
    """Before: -1 read the body until the client closed, past the 64 MiB cap (RSS 90 -> 291 MiB
    and growing). Now the headers alone decide; the connection stays open on our side, so only
    an answer from the agent ends the read."""
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode() if authorized else b""
    with _connect(agent_process["port"]) as s:
        s.sendall(b"POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth + b"Content-Length: -1\r\n\r\n" + b"[" * 65536)
        answer = _read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 400 " if authorized else b"HTTP/1.1 401 "), answer[:200]


def test_stalled_connections_cost_no_thread_and_are_closed(agent_process):
    """Before: 300 stalled requests = 306 threads, held forever. Now 2 workers + 1 queue slot
    hold three; the rest get 503 at once; the held ones are closed at their deadline (API_TIMEOUT_S)."""
    proc, port = agent_process["proc"], agent_process["port"]
    threads_before = _threads(proc.pid)
    partial = f"POST /v1/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n".encode()  # never finished
    held = []
    try:
        while len(held) < 3:
            s = _connect(port)
            s.sendall(partial)
            # held only once the agent took it without answering: under load a worker may not yet
            # have taken the previous one off the queue, so this one was refused (503) and another goes
            if select.select([s], [], [], 0.5)[0]:
                s.close()
                continue
            held.append(s)
        started = time.monotonic()
        probes = 0
        # these send nothing: the answer comes at accept, before any byte; probed while the held
        # ones are surely held (before their deadline frees a worker), 40 at most, 5 at least
        while probes < 40 and (probes < 5 or time.monotonic() - started < API_TIMEOUT_S / 2):
            with _connect(port) as s:
                assert _read_until_closed(s).startswith(b"HTTP/1.1 503 ")
            probes += 1
        assert _threads(proc.pid) <= threads_before
        assert [_read_until_closed(s) for s in held] == [b""] * 3
    finally:
        for s in held:
            s.close()
    assert wait_for(lambda: _status_or_busy(agent_process["client"]), 10, what="a worker free again")["device_id"] == "api-proc"


def _status_or_busy(client):
    try:
        return client.status()
    except AgentApiError as e:  # 503 until the workers have finished the closed connections
        assert e.status == 503
        return None
    except ConnectionError:  # refused at once by a busy server, before the request was sent
        return None
