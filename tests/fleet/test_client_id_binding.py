"""Client-id takeover (issue 13, finding 1): on the broker config `edgeops fleet` generates, a
device with valid credentials that connects with the console's client id, or another device's,
gets its own session instead: nobody is kicked and telemetry the devices had acknowledged is
stored. The console refuses a fleet.toml that would let devices pick its client id."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from edgeops.errors import ConfigError
from edgeops.fleet.config import config_from_dict, load_config
from tests.fleet.generated_broker import GeneratedBroker, cli, fleet_folder
from tests.support.broker import MOSQUITTO, free_port


def _mqtt_client(client_id: str, port: int, *, user: str | None = None, password: str | None = None, cert_dir=None):
    """A connected MQTT 5 client with a persistent session; records CONNACKs and disconnects."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if user:
        c.username_pw_set(user, password)
    if cert_dir:
        c.tls_set(ca_certs=str(cert_dir / "ca.crt"), certfile=str(cert_dir / "client.crt"), keyfile=str(cert_dir / "client.key"))
    c.reconnect_delay_set(0.2, 0.5)  # a kicked owner comes straight back, as the agents do: the flapping the attack causes
    c.connacks, c.drops = [], []
    connected = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p=None: (c.connacks.append(rc), connected.set())
    c.on_disconnect = lambda cl, u, f, rc, p=None: c.drops.append(rc)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("localhost" if cert_dir else "127.0.0.1", port, clean_start=False, properties=props)
    c.loop_start()
    assert connected.wait(10), f"{client_id}: no CONNACK"
    assert not c.connacks[0].is_failure, f"{client_id}: refused ({c.connacks[0]})"
    return c


def _telemetry(device: str, seq: int) -> bytes:
    now = time.time()
    return json.dumps({"device_id": device, "seq": seq, "ts_start": now - 1, "ts_end": now, "inference_count": 10}).encode()


@pytest.mark.slow
@pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")
def test_devices_cannot_take_over_the_console_or_each_other(tmp_path):
    from edgeops.fleet.console import FleetConsole, count_rows
    from tests.support.wait import wait_for

    base = fleet_folder()
    try:
        plain, tls_port = free_port(), free_port()
        cli("init", "--dir", str(base), "--broker-url", f"mqtt://127.0.0.1:{plain}", "--api-bind", "127.0.0.1:0")
        fleet_toml = str(base / "fleet.toml")
        cli("broker-cert", "localhost", "--port", str(tls_port), "--no-update-config", "--config", fleet_toml)
        cli("enroll", "dev-a", "--config", fleet_toml)
        cli("enroll", "dev-b", "--config", fleet_toml)
        cli("enroll", "cam-c", "--method", "cert", "--config", fleet_toml)
        devices = base / "enroll" / "devices"
        pw = {d: (devices / d / "password").read_text().strip() for d in ("dev-a", "dev-b")}
        with GeneratedBroker(base / "enroll").start(plain, tls_port):
            console = FleetConsole(load_config(fleet_toml)).start()
            clients = []
            try:
                owner = _mqtt_client("dev-a", plain, user="dev-a", password=pw["dev-a"])
                clients.append(owner)
                # valid credentials, someone else's client id: on the password and on the certificate listener
                clients += [
                    _mqtt_client("edgeops-console", plain, user="dev-b", password=pw["dev-b"]),
                    _mqtt_client("dev-a", tls_port, cert_dir=devices / "cam-c"),
                    _mqtt_client("edgeops-console", tls_port, cert_dir=devices / "cam-c"),
                ]
                # the owner publishes telemetry; each PUBACK is the broker's promise (the agent then deletes it from its spool)
                for seq in range(1, 31):
                    owner.publish("edgeops/v1/dev-a/telemetry", _telemetry("dev-a", seq), qos=1).wait_for_publish(10)
                    if seq % 10 == 0:  # the attackers reconnect with the stolen ids in between
                        clients[1].reconnect()
                        clients[3].reconnect()
                wait_for(lambda: count_rows(console.db, "telemetry") >= 30, 20, 0.1, "30 telemetry batches stored")
                time.sleep(0.5)
                assert count_rows(console.db, "telemetry") == 30
                assert console.mqtt.connects == 1 and console.mqtt_connected, "the console's session was taken over"
                assert owner.drops == [] and len(owner.connacks) == 1, "dev-a was kicked by a device using its client id"
                # acknowledged while the console is down: queued in its session, which its next start
                # (protocol "auto" probes first, under the same forced client id) must not wipe
                console.stop()
                for seq in range(31, 36):
                    owner.publish("edgeops/v1/dev-a/telemetry", _telemetry("dev-a", seq), qos=1).wait_for_publish(10)
                console = FleetConsole(load_config(fleet_toml)).start()
                wait_for(lambda: count_rows(console.db, "telemetry") >= 35, 20, 0.1, "the 5 batches queued while the console was down")
            finally:
                for c in clients:
                    c.disconnect()
                    c.loop_stop()
                console.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _broker(**kw):
    return config_from_dict({"broker": kw}).broker


def test_client_id_defaults_to_the_broker_user():
    assert _broker(url="mqtt://10.0.0.5:1883", username="console-2", password="x").client_id == "console-2"
    assert _broker().client_id == "edgeops-console"


def test_console_refuses_a_client_id_devices_could_take(tmp_path):
    from edgeops.fleet.broker_identity import check_console_identity
    from edgeops.fleet.console import FleetConsole
    from edgeops.fleet.enroll import FleetCA

    cfg = config_from_dict({"broker": {"url": "mqtt://10.0.0.5:1883", "username": "edgeops-console", "password": "x", "client_id": "console"}, "database": {"url": f"sqlite:///{tmp_path / 'f.db'}"}})
    with pytest.raises(ConfigError, match=r"client_id 'console' differs from the console's broker user 'edgeops-console'.*use_username_as_clientid"):
        FleetConsole(cfg).start()  # refused before it connects anywhere (nothing listens on 10.0.0.5)
    # an anonymous broker on another host: anyone there could connect as the console
    with pytest.raises(ConfigError, match=r"allow_anonymous_broker"):
        check_console_identity(_broker(url="mqtt://broker.example.com:1883"))
    check_console_identity(_broker(url="mqtt://broker.example.com:1883", allow_anonymous_broker=True))
    check_console_identity(_broker(url="mqtt://127.0.0.1:1883"))  # this host's broker (tests, demo)
    # with a client certificate the identity is its CN, which must match username and client id
    key, cert = FleetCA(tmp_path / "ca").issue("console-7")
    (tmp_path / "c.crt").write_bytes(cert)
    check_console_identity(_broker(url="mqtts://b:8883", cert_file=str(tmp_path / "c.crt"), key_file="k", client_id="console-7"))
    with pytest.raises(ConfigError, match=r"client_id 'edgeops-console' differs.*'console-7'"):
        check_console_identity(_broker(url="mqtts://b:8883", cert_file=str(tmp_path / "c.crt"), key_file="k"))
    with pytest.raises(ConfigError, match=r"username 'edgeops-console' and the common name 'console-7'"):
        check_console_identity(_broker(url="mqtts://b:8883", username="edgeops-console", cert_file=str(tmp_path / "c.crt"), key_file="k"))


def test_console_replicas_get_their_own_broker_users(tmp_path):
    cli("init", "--dir", str(tmp_path))
    fleet_toml = str(tmp_path / "fleet.toml")
    out = cli("console-user", "console-2", "--config", fleet_toml)
    import tomllib

    broker = tomllib.loads((tmp_path / "enroll/consoles/console-2/broker.toml").read_text())["broker"]
    assert broker["username"] == "console-2" and broker["password"]
    assert oct((tmp_path / "enroll/consoles/console-2/broker.toml").stat().st_mode & 0o777) == "0o600"
    acl = (tmp_path / "enroll/mosquitto.acl").read_text()
    assert "user edgeops-console\ntopic readwrite edgeops/v1/#" in acl and "user console-2\ntopic readwrite edgeops/v1/#" in acl
    # the replica's config passes the start-up check; a device cannot be enrolled under a console user's name
    from edgeops.fleet.broker_identity import check_console_identity

    check_console_identity(config_from_dict({"broker": broker}).broker)
    from click.testing import CliRunner

    from edgeops.fleet.cli import fleet

    res = CliRunner().invoke(fleet, ["enroll", "console-2", "--config", fleet_toml])
    assert res.exit_code != 0 and "console's broker user" in str(res.exception)
    assert out["notes"]
