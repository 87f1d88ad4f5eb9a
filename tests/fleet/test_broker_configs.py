"""`edgeops fleet broker-config --kind nats|rabbitmq`: the real broker starts with the generated
config, and the console and a real agent (credentials from `edgeops fleet enroll`) work through
it; a device cannot publish on another device's topics, a wrong password is refused, and a device
enrolled after the broker started gets in after a reload. Skipped with the reason where the
broker is not installed. Unit checks of the hashes the brokers verify are at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner

from edgeops.fleet.broker_configs import bcrypt_hash, rabbit_hash
from edgeops.fleet.cli import fleet
from edgeops.fleet.config import load_config, render_toml
from edgeops.fleet.console import FleetConsole
from edgeops.fleet.registry import get_device
from tests.agent.helpers import stop_agent
from tests.fleet.brokers import NATS_SERVER, RabbitBroker, wait_until
from tests.fleet.test_broker_matrix import PROFILE, enrol_and_start_agent, telemetry_rows
from tests.support.broker import free_port, terminate, wait_port

pytestmark = pytest.mark.slow


def cli(*args) -> dict:
    res = CliRunner().invoke(fleet, [*args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


class GeneratedNats:
    """nats-server -c the generated nats.conf."""

    kind = "generated-nats"  # not "rabbitmq": enrol_and_start_agent adds no user by hand

    def __init__(self, port: int):
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.log = Path(tempfile.mkdtemp(prefix="edgeops-natsgen-")) / "nats.log"

    @staticmethod
    def missing() -> str | None:
        return None if NATS_SERVER else "nats-server is not installed"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, conf: Path) -> None:
        self.proc = subprocess.Popen([NATS_SERVER, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        try:
            wait_port(self.port, 30)
        except TimeoutError:
            raise AssertionError(f"nats-server refused the generated config:\n{self.log.read_text()[-3000:]}") from None

    def reload(self, _conf: Path) -> None:
        subprocess.run([NATS_SERVER, "--signal", f"reload={self.proc.pid}"], check=True, capture_output=True, timeout=30)

    def stop(self) -> None:
        terminate(self.proc)
        shutil.rmtree(self.log.parent, ignore_errors=True)


class GeneratedRabbit(RabbitBroker):
    """A private RabbitMQ node (tests/fleet/brokers.py) started with the generated rabbitmq.conf
    and enabled_plugins instead of the test's own."""

    kind = "generated-rabbitmq"

    def __init__(self, port: int):
        super().__init__()
        self.port = port

    def start(self, conf: Path) -> None:  # type: ignore[override]
        shutil.copyfile(conf, self.dir / "rabbitmq.conf")
        shutil.copyfile(conf.parent / "enabled_plugins", self.dir / "enabled_plugins")
        self.proc = subprocess.Popen(
            [str(Path("/usr/lib/rabbitmq/bin/rabbitmq-server"))], env=self._env(), cwd=self.dir, stdin=subprocess.DEVNULL,
            stdout=open(self.dir / "server.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            wait_port(self.port, 90)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"RabbitMQ refused the generated config:\n{(self.dir / 'server.log').read_text()[-3000:]}") from None

    def reload(self, conf: Path) -> None:
        self.ctl("import_definitions", str(conf.parent / "definitions.json"))


GENERATED = {"nats": (GeneratedNats, "nats.conf"), "rabbitmq": (GeneratedRabbit, "rabbitmq.conf")}


def connect(port: int, user: str, password: str, received: list | None = None, subscribe: str | None = None) -> tuple[mqtt.Client, int]:
    """A paho MQTT 3.1.1 client; (client, CONNACK reason code: 0 accepted). Its client id is its
    own: NATS and RabbitMQ do not bind client ids to users, so the console's id would take the
    running console's session."""
    rc: list[int] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-test-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv311)
    c.username_pw_set(user, password)
    c.on_connect = lambda cl, _u, _f, reason, _p: (rc.append(reason.value), subscribe and reason.value == 0 and cl.subscribe(subscribe, qos=1))
    if received is not None:
        c.on_message = lambda _c, _u, msg: received.append(msg.topic)
    c.connect("127.0.0.1", port)
    c.loop_start()
    wait_until(lambda: rc, 15, f"CONNACK for {user}")
    return c, rc[0]


@pytest.mark.parametrize("kind", list(GENERATED))
def test_generated_broker_config_runs_the_fleet(kind, tmp_path, fleet_repo):
    cls, conf_name = GENERATED[kind]
    why = cls.missing()
    if why:
        pytest.skip(why)
    tmp_path.chmod(0o755)
    port = free_port()
    broker = cls(port)
    console_password = "console-" + uuid.uuid4().hex
    fleet_toml = tmp_path / "fleet.toml"
    fleet_toml.write_text(render_toml({
        "broker": {"url": broker.url, "username": "edgeops-console", "password": console_password, "protocol": "auto"},
        "database": {"url": f"sqlite:///{tmp_path / 'fleet.db'}"},
        "repository": {"dir": str(fleet_repo["repo"]), "keys_dir": str(fleet_repo["keys"])},
        "api": {"bind": "127.0.0.1:0", "tokens": ["t-" + uuid.uuid4().hex]},
        "rollouts": {"reconcile_interval_s": 0.3},
        "ingest": {"flush_interval_s": 0.05},
        "enroll": {"dir": str(tmp_path / "enroll"), "password_file": str(tmp_path / "enroll/passwd"), "acl_file": str(tmp_path / "enroll/acl"),
                   "ca_dir": str(tmp_path / "enroll/ca"), "password_listener_port": port},
    }))
    extra = ["--client-port", str(free_port()), "--store-dir", str(tmp_path / "js")] if kind == "nats" else []
    made = cli("broker-config", "--kind", kind, "--config", str(fleet_toml), "--mqtt-port", str(port), "--bind", "127.0.0.1", *extra)
    conf = Path(made["files"][0])
    assert conf.name == conf_name and made["users"] == 1  # the console only, so far
    # enroll (the real CLI) rewrites the config with each new device
    agent = None
    console = None
    try:
        agent = enrol_and_start_agent(broker, fleet_toml, "gen-a", tmp_path)
        cli("enroll", "gen-b", "--profile", PROFILE, "--config", str(fleet_toml))
        users = (conf.parent / "definitions.json").read_text() if kind == "rabbitmq" else conf.read_text()
        assert '"gen-a"' in users and '"gen-b"' in users
        broker.start(conf)
        console = FleetConsole(load_config(fleet_toml)).start()
        assert console.mqtt.protocol == "3.1.1"
        wait_until(lambda: (get_device(console.db, "gen-a") or {}).get("online"), 90, f"the agent online through generated {kind}")
        wait_until(lambda: telemetry_rows(console, "gen-a") > 0, 60, "the agent's telemetry stored")

        # confinement: gen-b's credentials cannot publish as gen-a or read gen-a's commands
        seen: list[str] = []
        watcher, rc = connect(port, "edgeops-console", console_password, seen, "edgeops/v1/+/events")
        assert rc == 0
        b_password = (tmp_path / "enroll/devices/gen-b/password").read_text().strip()
        own: list[str] = []
        device_b, rc = connect(port, "gen-b", b_password, own, "edgeops/v1/gen-b/cmd")
        assert rc == 0
        time.sleep(1.0)  # the SUBSCRIBE in place
        device_b.publish("edgeops/v1/gen-b/events", b"{}", qos=1)
        watcher.publish("edgeops/v1/gen-b/cmd", b"{}", qos=1)
        wait_until(lambda: "edgeops/v1/gen-b/events" in seen, 30, "gen-b's own event through the broker")
        wait_until(lambda: "edgeops/v1/gen-b/cmd" in own, 30, "gen-b's own command through the broker")
        # another device's topics, each on a connection of its own (RabbitMQ closes a connection
        # that tries; NATS drops the message). NATS delivers QoS 1 on $MQTT.sub.<id>, which every
        # user may subscribe to: a device reading it must not see another's commands either
        snooped: list[str] = []
        spy, _ = connect(port, "gen-b", b_password, snooped)
        for topic in ("edgeops/v1/gen-a/cmd", *(["$MQTT/sub/#"] if kind == "nats" else [])):
            spy.subscribe(topic, qos=1)
        forger, _ = connect(port, "gen-b", b_password)
        time.sleep(1.0)
        forger.publish("edgeops/v1/gen-a/events", b"{}", qos=1)
        watcher.publish("edgeops/v1/gen-a/cmd", b"{}", qos=1)
        time.sleep(1.0)
        device_b.publish("edgeops/v1/gen-b/events", b"{}", qos=1)  # published after the forgery
        wait_until(lambda: seen.count("edgeops/v1/gen-b/events") == 2, 30, "gen-b's event after the forgery")
        assert "edgeops/v1/gen-a/events" not in seen and snooped == [], (seen, snooped)
        for c in (watcher, device_b, spy, forger):
            c.loop_stop()
            c.disconnect()

        # a wrong password is refused
        bad, rc = connect(port, "gen-b", "wrong-" + b_password)
        bad.loop_stop()
        assert rc != 0

        # a device enrolled now gets in after the reload the command's output names
        cli("enroll", "gen-c", "--profile", PROFILE, "--config", str(fleet_toml))
        broker.reload(conf)
        c_password = (tmp_path / "enroll/devices/gen-c/password").read_text().strip()

        def admitted() -> bool:  # a reload is asynchronous: the broker reads the file meanwhile
            late, rc = connect(port, "gen-c", c_password)
            late.loop_stop()
            late.disconnect()
            return rc == 0

        wait_until(admitted, 30, f"gen-c admitted after the {kind} reload", every=1.0)
    finally:
        if agent is not None:
            stop_agent(agent)
        if console is not None:
            console.stop()
        broker.stop()


def test_hashes_verify_as_the_brokers_do():
    # RabbitMQ: base64(salt + sha256(salt + password)), 4 bytes of salt
    import base64
    import hashlib

    raw = base64.b64decode(rabbit_hash("s3cret", salt=b"\x01\x02\x03\x04"))
    assert raw[:4] == b"\x01\x02\x03\x04" and raw[4:] == hashlib.sha256(b"\x01\x02\x03\x04s3cret").digest()
    # NATS: bcrypt $2b$; the same password hashes differently each time (salted)
    a, b = bcrypt_hash("s3cret"), bcrypt_hash("s3cret")
    assert a.startswith("$2b$04$") and a != b and len(a) == 60


def test_mosquitto_kind_rewrites_the_include_folder(tmp_path):
    fleet_toml = tmp_path / "fleet.toml"
    fleet_toml.write_text(render_toml({
        "broker": {"url": "mqtt://127.0.0.1:1883", "username": "edgeops-console", "password": "pw"},
        "database": {"url": f"sqlite:///{tmp_path / 'fleet.db'}"},
        "enroll": {"dir": str(tmp_path / "enroll"), "password_file": str(tmp_path / "enroll/passwd"), "acl_file": str(tmp_path / "enroll/acl"), "ca_dir": str(tmp_path / "enroll/ca")},
    }))
    made = cli("broker-config", "--kind", "mosquitto", "--config", str(fleet_toml))
    assert made["include"] == f"include_dir {(tmp_path / 'enroll/broker').resolve()}"
    assert {Path(f).name for f in made["files"]} == {"security.conf", "password-listener.conf"}
    assert "user edgeops-console" in (tmp_path / "enroll/acl").read_text()


def test_nats_and_rabbitmq_need_the_console_password(tmp_path):
    fleet_toml = tmp_path / "fleet.toml"
    fleet_toml.write_text(render_toml({
        "broker": {"url": "mqtt://127.0.0.1:1883", "username": "edgeops-console", "password_env": "EDGEOPS_TEST_UNSET_" + uuid.uuid4().hex[:6]},
        "database": {"url": f"sqlite:///{tmp_path / 'fleet.db'}"},
        "enroll": {"dir": str(tmp_path / "enroll")},
    }))
    res = CliRunner().invoke(fleet, ["broker-config", "--kind", "nats", "--config", str(fleet_toml)])
    assert res.exit_code != 0 and "broker password is not set" in str(res.exception or res.output)
