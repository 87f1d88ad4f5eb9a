"""Start a real MQTT broker for a test: mosquitto on a free port, or amqtt when it is missing.

Tests that kill or partition the broker own their broker through :class:`TestBroker` so they
can stop and restart it on the same port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")



def terminate(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM a test's server process if it runs, SIGKILL it after ``timeout`` s."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()

class TestBroker:
    """A broker process owned by one test; stop()/start() keep the port.

    ``extra_config`` lines are appended to the mosquitto config (e.g. password_file, acl_file).
    max_queued_messages is raised because mosquitto drops QoS 0 past 1000 queued by default.
    """

    __test__ = False

    def __init__(self, extra_config: str = "", port: int | None = None, allow_anonymous: bool = True):
        self.port = port or free_port()
        self.extra_config = extra_config
        self.allow_anonymous = allow_anonymous
        self.workdir = Path(tempfile.mkdtemp(prefix="edgeops-broker-"))
        self.proc: subprocess.Popen | None = None
        self._embedded = None
        self.kind = "mosquitto" if MOSQUITTO else "amqtt"

    @property
    def url(self) -> str:
        """mqtt://127.0.0.1:port"""
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "TestBroker":
        """Start (or restart) the broker on its port."""
        if MOSQUITTO:
            conf = self.workdir / "mosquitto.conf"
            conf.write_text(
                f"listener {self.port} 127.0.0.1\n"
                f"allow_anonymous {'true' if self.allow_anonymous else 'false'}\n"
                "persistence false\n"
                "max_queued_messages 100000\n"
                "max_inflight_messages 0\n"
                "set_tcp_nodelay true\n"  # as deployments should (docs/agent.md, bench/agent.py)
                "log_dest stderr\n"
                "log_type error\n"
                f"{self.extra_config}\n"
            )
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=open(self.workdir / "broker.log", "ab"))
        else:
            from edgeops.fleet.embedded_broker import EmbeddedBroker

            self._embedded = EmbeddedBroker(port=self.port).start()
        wait_port(self.port)
        return self

    def kill(self) -> None:
        """Kill the broker abruptly (SIGKILL), as a crash or a network loss would."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self._embedded:
            self._embedded.stop()
            self._embedded = None

    def stop(self) -> None:
        """Stop the broker and clean up."""
        terminate(self.proc)
        if self._embedded:
            self._embedded.stop()
            self._embedded = None

    def __enter__(self) -> "TestBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
