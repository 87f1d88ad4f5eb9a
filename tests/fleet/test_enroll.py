"""Enrolment: mosquitto-compatible password hashes, X.509 device certificates, agent.toml, and a
real-broker ACL test: a device using its own credentials cannot read another device's commands
nor publish as another device."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest
from click.testing import CliRunner

from edgeops.errors import ConfigError
from edgeops.fleet.cli import fleet
from edgeops.fleet.config import load_config
from edgeops.fleet.enroll import FleetCA, PasswordFile, acl_text, check_mosquitto_hash, mosquitto_hash, parse_tags
from edgeops.fleet.registry import get_device
from edgeops.fleet.db import Database
from edgeops.protocol import DEVICE_ID_PATTERN
from tests.support.broker import MOSQUITTO, TestBroker

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def test_hash_roundtrip_and_format():
    h = mosquitto_hash("s3cret")
    assert h.startswith("$7$101$") and check_mosquitto_hash("s3cret", h) and not check_mosquitto_hash("other", h)
    assert not check_mosquitto_hash("s3cret", "$6$abc$def")


@pytest.mark.skipif(MOSQUITTO_PASSWD is None, reason="needs mosquitto_passwd")
def test_hash_compatible_with_mosquitto_passwd(tmp_path):
    f = tmp_path / "pw"
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(f), "alice", "pa:ss word"], check=True)
    assert check_mosquitto_hash("pa:ss word", PasswordFile(f).entries["alice"])


def test_parse_tags():
    assert parse_tags("site=berlin, line=3") == {"site": "berlin", "line": "3"}
    assert parse_tags("") == {}
    with pytest.raises(ConfigError, match="'oops'"):
        parse_tags("site=berlin,oops")


def test_acl_confines_devices_to_their_subtree():
    text = acl_text("console")
    assert "user console\ntopic readwrite edgeops/v1/#" in text
    assert "pattern read edgeops/v1/%u/cmd" in text and "pattern write edgeops/v1/%u/telemetry" in text
    assert "edgeops/v1/#" not in text.split("pattern", 1)[1]  # no pattern gives a device the whole tree


def test_device_certificate(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca = FleetCA(tmp_path / "ca")
    key_pem, cert_pem = ca.issue("cam-0042")
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-0042"
    assert cert.issuer == ca_cert.subject
    ca_cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    assert oct(ca.key_path.stat().st_mode & 0o777) == "0o600"


@pytest.fixture
def fleet_dir(tmp_path):
    res = CliRunner().invoke(fleet, ["init", "--dir", str(tmp_path), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return tmp_path


def enroll(fleet_dir, *args):
    res = CliRunner().invoke(fleet, ["enroll", *args, "--config", str(fleet_dir / "fleet.toml"), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_init_and_enroll_write_everything(fleet_dir):
    cfg = load_config(fleet_dir / "fleet.toml")
    assert oct((fleet_dir / "fleet.toml").stat().st_mode & 0o777) == "0o600"
    assert (fleet_dir / "keys" / "keyring.json").exists() and (fleet_dir / "repo" / "metadata" / "timestamp.json").exists()
    out = enroll(fleet_dir, "cam-1", "--tags", "site=berlin,line=3", "--profile", "x86_64-avx2")
    pw = PasswordFile(cfg.path(cfg.enroll.password_file))
    device_dir = fleet_dir / "enroll" / "devices" / "cam-1"
    assert check_mosquitto_hash((device_dir / "password").read_text().strip(), pw.entries["cam-1"])
    assert check_mosquitto_hash(cfg.broker.password, pw.entries["edgeops-console"])
    assert (device_dir / "root.json").exists() and list(device_dir.glob("command-*.pub.json"))
    db = Database.from_config(cfg)
    assert get_device(db, "cam-1")["tags"] == {"site": "berlin", "line": "3"}
    db.dispose()
    # the agent accepts the generated config as it is
    agent_config = pytest.importorskip("edgeops.agent.config")
    acfg = agent_config.load_config(out["agent_toml"])
    assert acfg.device_id == "cam-1" and acfg.broker.username == "cam-1" and acfg.broker.read_password() == (device_dir / "password").read_text().strip()
    assert acfg.tags == {"site": "berlin", "line": "3"} and acfg.trust.root.exists() and all(p.exists() for p in acfg.trust.command_keys)
    # a certificate device needs the TLS listener `broker-cert` makes, and gets its port
    res = CliRunner().invoke(fleet, ["enroll", "cam-2", "--method", "cert", "--config", str(fleet_dir / "fleet.toml")])
    assert res.exit_code != 0 and "broker-cert" in str(res.exception)
    tls = CliRunner().invoke(fleet, ["broker-cert", "localhost", "--port", "18883", "--no-update-config", "--config", str(fleet_dir / "fleet.toml")])
    assert tls.exit_code == 0, tls.output
    cert = enroll(fleet_dir, "cam-2", "--method", "cert")
    acfg2 = agent_config.load_config(cert["agent_toml"])
    assert acfg2.broker.client_cert.exists() and acfg2.broker.url == "mqtts://localhost:18883"
    # bad input names the device
    res = CliRunner().invoke(fleet, ["enroll", "bad id!", "--config", str(fleet_dir / "fleet.toml")])
    assert res.exit_code != 0 and "bad id!" in str(res.exception)
    # an id with '.' breaks NATS and RabbitMQ MQTT: refused, naming the id and the pattern
    res = CliRunner().invoke(fleet, ["enroll", "cam.3", "--config", str(fleet_dir / "fleet.toml")])
    assert res.exit_code != 0 and "'cam.3'" in str(res.exception) and DEVICE_ID_PATTERN in str(res.exception)
    assert not (fleet_dir / "enroll/devices/cam.3").exists()
    # the generated agent.toml lets the agent pick MQTT 5 or fall back to 3.1.1
    assert acfg.broker.mqtt_version == "auto"


@pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")
def test_broker_acl_confines_each_device(fleet_dir):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    cfg = load_config(fleet_dir / "fleet.toml")
    enroll(fleet_dir, "dev-a")
    enroll(fleet_dir, "dev-b")
    pw_a = (fleet_dir / "enroll/devices/dev-a/password").read_text().strip()
    extra = f"password_file {cfg.path(cfg.enroll.password_file)}\nacl_file {cfg.path(cfg.enroll.acl_file)}\n"
    if os.geteuid() == 0:
        extra += "user root\n"  # mosquitto started by root drops to 'mosquitto', which cannot read pytest's 0700 tmp dirs
    with TestBroker(extra_config=extra, allow_anonymous=False) as broker:

        def client(user, password, name):
            got, subacks, connacks = [], {}, []
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
            c.username_pw_set(user, password)
            c.on_connect = lambda cl, u, f, rc, p=None: connacks.append(rc)
            c.on_message = lambda cl, u, m: got.append((m.topic, m.payload))
            c.on_subscribe = lambda cl, u, mid, rcs, p=None: subacks.__setitem__(mid, rcs)
            c.connect("127.0.0.1", broker.port)
            c.loop_start()
            deadline = time.monotonic() + 10
            while not connacks and time.monotonic() < deadline:
                time.sleep(0.02)
            return c, got, subacks, connacks

        def wait(pred, timeout=5.0):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if pred():
                    return True
                time.sleep(0.02)
            return False

        console, console_got, console_subs, cc = client(cfg.enroll.console_username, cfg.broker.password, "console")
        dev_a, a_got, a_subs, ac = client("dev-a", pw_a, "dev-a")
        assert not cc[0].is_failure and not ac[0].is_failure
        # wrong password and unknown users are refused
        _, _, _, bad = client("dev-b", "wrong", "intruder")
        _, _, _, anon = client("nobody", "x", "anon")
        assert bad and bad[0].is_failure and anon and anon[0].is_failure

        console.subscribe("edgeops/v1/#", qos=1)
        _, mid_other = dev_a.subscribe("edgeops/v1/dev-b/cmd", qos=1)
        _, mid_own = dev_a.subscribe("edgeops/v1/dev-a/cmd", qos=1)
        _, mid_wild = dev_a.subscribe("edgeops/v1/+/cmd", qos=1)
        assert wait(lambda: {mid_other, mid_own, mid_wild} <= set(a_subs) and console_subs)
        assert a_subs[mid_own][0].value == 1  # granted QoS 1
        # mosquitto grants the subscription but delivers nothing the ACL denies (checked below)

        # commands for dev-b never reach dev-a; its own do
        console.publish("edgeops/v1/dev-b/cmd", b"for-b", qos=1).wait_for_publish(5)
        console.publish("edgeops/v1/dev-a/cmd", b"for-a", qos=1).wait_for_publish(5)
        assert wait(lambda: any(p == b"for-a" for _, p in a_got))
        time.sleep(0.3)
        assert [p for _, p in a_got if p == b"for-b"] == []

        # dev-a cannot publish as dev-b (telemetry, state, events) nor forge commands; its own telemetry arrives
        for topic in ("edgeops/v1/dev-b/telemetry", "edgeops/v1/dev-b/state", "edgeops/v1/dev-b/events", "edgeops/v1/dev-a/cmd", "edgeops/v1/dev-b/fetch/resp"):
            dev_a.publish(topic, b"forged", qos=1).wait_for_publish(5)
        dev_a.publish("edgeops/v1/dev-a/telemetry", b"mine", qos=1).wait_for_publish(5)
        assert wait(lambda: ("edgeops/v1/dev-a/telemetry", b"mine") in console_got)
        time.sleep(0.3)
        assert [t for t, p in console_got if p == b"forged"] == []
        assert [p for _, p in a_got if p == b"forged"] == []
        for c in (console, dev_a):
            c.disconnect()
            c.loop_stop()
