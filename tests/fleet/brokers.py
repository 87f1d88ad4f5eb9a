"""Real MQTT brokers users run, started by tests on free ports: mosquitto 2, NATS (MQTT on
JetStream) and RabbitMQ (a private node with the rabbitmq_mqtt plugin).

Each launcher says why it cannot run (``missing()``) so a test skips with the reason on a
machine without the broker. Nothing here touches a broker the machine already runs: NATS gets
its own config and store dir, RabbitMQ its own node name, ports, mnesia dir and cookie.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.support.broker import MOSQUITTO, TestBroker, free_port, terminate, wait_port

NATS_SERVER = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None)
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
RABBIT_PLUGIN = next(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*/plugins/rabbitmq_mqtt-*"), None) if Path("/usr/lib/rabbitmq/lib").exists() else None


class NatsBroker:
    """nats-server with an ``mqtt`` block (JetStream holds MQTT sessions and retained messages).

    ``routes``: other nodes' cluster ports (a cluster on loopback); ``cluster_port`` this one's."""

    kind = "nats"

    def __init__(self, name: str | None = None, cluster_port: int | None = None, routes: list[int] | None = None, cluster_name: str = "edgeops"):
        self.name = name or f"edgeops-{uuid.uuid4().hex[:6]}"
        self.port = free_port()
        self.client_port = free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.cluster_name = cluster_name
        self.dir = Path(tempfile.mkdtemp(prefix="edgeops-nats-"))
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def missing() -> str | None:
        return None if NATS_SERVER else "nats-server is not installed"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config(self) -> str:
        text = (
            f'server_name: "{self.name}"\n'
            f"listen: 127.0.0.1:{self.client_port}\n"
            f'jetstream {{ store_dir: "{self.dir / "js"}" }}\n'
            f"mqtt {{ host: 127.0.0.1, port: {self.port} }}\n"
        )
        if self.cluster_port:
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
            text += f'cluster {{ name: "{self.cluster_name}", listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}\n'
            # MQTT's session, message and retained streams on every node: the first MQTT client may
            # come while the cluster has formed only partly, and NATS then sizes them to what it sees
            # (R2 here), which loses quorum when one node dies and never recovers
            text = text.replace(f"port: {self.port} }}", f"port: {self.port}, stream_replicas: {len(self.routes) + 1} }}")
        return text

    def start(self, wait: bool = True) -> "NatsBroker":
        conf = self.dir / "nats.conf"
        conf.write_text(self.config())
        self.proc = subprocess.Popen([NATS_SERVER, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=open(self.dir / "nats.log", "ab"))
        if wait:
            self.wait()
        return self

    def wait(self, timeout: float = 30.0) -> None:
        try:
            wait_port(self.port, timeout)
        except TimeoutError:
            raise AssertionError(f"nats-server did not start:\n{(self.dir / 'nats.log').read_text()[-3000:]}") from None

    def kill(self) -> None:
        """SIGKILL (a node that dies)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        terminate(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class RabbitBroker:
    """A private RabbitMQ node (own node name, AMQP/dist/MQTT ports, mnesia dir, cookie) with
    rabbitmq_mqtt enabled from its own enabled_plugins file; ~8 s to start on 2 cores.

    MQTT clients authenticate as RabbitMQ users (:meth:`add_user`); anonymous MQTT is off."""

    kind = "rabbitmq"

    def __init__(self):
        self.port = free_port()
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.node = f"edgeops{uuid.uuid4().hex[:8]}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="edgeops-rabbit-"))
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def missing() -> str | None:
        if not (RABBIT_BIN / "rabbitmq-server").exists():
            return "RabbitMQ is not installed"
        if RABBIT_PLUGIN is None:
            return "RabbitMQ's rabbitmq_mqtt plugin is not installed"
        return None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _env(self) -> dict:
        d = self.dir
        return {
            **os.environ,
            "HOME": str(d),  # the node's and rabbitmqctl's Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
        }

    def start(self) -> "RabbitBroker":
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = false\n"
            "loopback_users = none\n"
        )
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        self.proc = subprocess.Popen(
            [str(RABBIT_BIN / "rabbitmq-server")], env=self._env(), cwd=self.dir, stdin=subprocess.DEVNULL,
            stdout=open(self.dir / "server.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_port(self.port, 90)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"RabbitMQ did not start:\n{(self.dir / 'server.log').read_text()[-3000:]}") from None
        return self

    def ctl(self, *args: str) -> None:
        """rabbitmqctl against this node."""
        res = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.node, *args], env=self._env(), capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise AssertionError(f"rabbitmqctl {' '.join(args)}: {res.stdout}{res.stderr}")

    def add_user(self, name: str, password: str) -> None:
        """A RabbitMQ user MQTT clients log in as, with access to the default vhost."""
        self.ctl("add_user", "--", name, password)  # "--": a generated password may start with '-'
        self.ctl("set_permissions", "-p", "/", "--", name, ".*", ".*", ".*")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # the process group is this node only (start_new_session): the shell, erl and epmd children it started
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Mosquitto:
    """mosquitto 2 (tests.support.broker.TestBroker) with the same face as the others."""

    kind = "mosquitto"

    def __init__(self):
        self.broker = TestBroker()

    @staticmethod
    def missing() -> str | None:
        return None if MOSQUITTO else "mosquitto is not installed"

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def url(self) -> str:
        return self.broker.url

    def start(self) -> "Mosquitto":
        self.broker.start()
        return self

    def stop(self) -> None:
        self.broker.stop()


BROKERS = {"mosquitto": Mosquitto, "nats": NatsBroker, "rabbitmq": RabbitBroker}


def wait_until(pred, timeout: float, what: str, every: float = 0.2):
    """``pred()`` once truthy, else AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
