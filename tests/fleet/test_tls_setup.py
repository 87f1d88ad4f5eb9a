"""The README's real setup, on a real mosquitto: a TLS listener with certificates from the fleet
CA (`edgeops fleet broker-cert`), devices enrolled with client certificates (identity = ACL
user), the console connecting with its own certificate, and a real agent process coming online.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeops.fleet.cli import fleet
from tests.fleet.generated_broker import GeneratedBroker, fleet_folder
from tests.support.broker import MOSQUITTO, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def cli(*args) -> dict:
    res = CliRunner().invoke(fleet, [*args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_broker_cert_names_and_bad_name(tmp_path):
    from cryptography import x509

    cli("init", "--dir", str(tmp_path))
    out = cli("broker-cert", "broker.example.com", "10.0.0.7", "--port", "18883", "--config", str(tmp_path / "fleet.toml"))
    cert = x509.load_pem_x509_certificate(Path(out["server_cert"]).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example.com"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    # the broker's key: readable by the broker's group (the mosquitto user's, when the host has one), nobody else
    from edgeops.fleet.broker_files import broker_access
    from edgeops.fleet.config import load_config

    group_readable = broker_access(load_config(tmp_path / "fleet.toml")).gid is not None and os.geteuid() == 0
    assert oct(Path(out["server_key"]).stat().st_mode & 0o777) == ("0o640" if group_readable else "0o600")
    raw = tomllib.loads((tmp_path / "fleet.toml").read_text())
    assert raw["broker"]["url"] == "mqtts://broker.example.com:18883" and raw["enroll"]["device_broker_url"] == raw["broker"]["url"]
    assert raw["repository"]["dir"] == "repo"  # the rest of the file is kept
    enrolled = cli("enroll", "cam-9", "--method", "cert", "--config", str(tmp_path / "fleet.toml"))
    agent = tomllib.loads(Path(enrolled["agent_toml"]).read_text())
    assert agent["broker"]["url"] == "mqtts://broker.example.com:18883" and agent["data_dir"] == "/var/lib/edgeops-agent"
    res = CliRunner().invoke(fleet, ["broker-cert", "bad name!", "--config", str(tmp_path / "fleet.toml")])
    assert res.exit_code != 0 and "bad name!" in str(res.exception)


@pytest.mark.slow
@pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto (TLS listener)")
def test_tls_fleet_with_device_certificates():
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from edgeops.fleet.config import load_config
    from edgeops.fleet.console import FleetConsole
    from tests.support.wait import wait_for
    from edgeops.fleet.registry import get_device

    base = fleet_folder()  # mosquitto (dropped to its own user when started by root) reads the generated files in place
    fleet_toml = base / "fleet.toml"
    plain = free_port()
    cli("init", "--dir", str(base), "--broker-url", f"mqtt://127.0.0.1:{plain}", "--api-bind", f"127.0.0.1:{free_port()}")
    tls_port = free_port()
    tls = cli("broker-cert", "localhost", "127.0.0.1", "--port", str(tls_port), "--config", str(fleet_toml))
    cam1 = cli("enroll", "cam-1", "--method", "cert", "--tags", "site=lab", "--config", str(fleet_toml))
    cli("enroll", "cam-2", "--method", "cert", "--config", str(fleet_toml))

    with GeneratedBroker(base / "enroll").start(plain, tls_port):
        console = FleetConsole(load_config(fleet_toml))
        console.db.create_all()
        console.start()
        agent_toml = Path(cam1["agent_toml"])
        text = agent_toml.read_text().replace('data_dir = "/var/lib/edgeops-agent"', f'data_dir = "{base / "cam-1-data"}"')
        agent_toml.write_text(text)
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        agent = subprocess.Popen([sys.executable, "-m", "edgeops.cli", "agent", "run", "--config", str(agent_toml)], cwd=agent_toml.parent, env=env, stdout=subprocess.DEVNULL, stderr=open(base / "agent.log", "ab"))
        try:
            # the real agent, on its certificate, reaches the console through the TLS listener
            wait_for(lambda: get_device(console.db, "cam-1")["online"], 60, 0.2, "cam-1 online over TLS")

            def client(device, name):
                d = base / "enroll" / "devices" / device
                got, connacks = [], []
                c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
                c.tls_set(ca_certs=str(d / "ca.crt"), certfile=str(d / "client.crt"), keyfile=str(d / "client.key"))
                c.on_connect = lambda cl, u, f, rc, p=None: connacks.append(rc)
                c.on_message = lambda cl, u, m: got.append(m.payload)
                c.connect("localhost", tls_port)
                c.loop_start()
                wait_for(lambda: connacks, 10, what=f"{name} connected")
                return c, got

            # cam-2's certificate does not read cam-1's commands
            spy, spied = client("cam-2", "cam-2-spy")
            spy.subscribe("edgeops/v1/cam-1/cmd", qos=1)
            own, own_got = client("cam-2", "cam-2")
            own.subscribe("edgeops/v1/cam-2/cmd", qos=1)
            time.sleep(0.5)
            console.mqtt.publish("edgeops/v1/cam-1/cmd", b"for-cam-1", qos=1)
            console.mqtt.publish("edgeops/v1/cam-2/cmd", b"for-cam-2", qos=1)
            wait_for(lambda: b"for-cam-2" in own_got, 10, what="cam-2 gets its own command")
            time.sleep(0.3)
            assert spied == []

            # no client certificate from the fleet CA: the broker never accepts the session (with
            # TLS 1.3 the refusal arrives after the client's side of the handshake completed)
            stranger = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="stranger", protocol=mqtt.MQTTv5)
            stranger.tls_set(ca_certs=tls["ca_cert"])
            accepted = []
            stranger.on_connect = lambda cl, u, f, rc, p=None: accepted.append(rc)
            try:
                stranger.connect("localhost", tls_port)
                for _ in range(10):
                    stranger.loop(timeout=0.3)
            except (ssl.SSLError, OSError):
                pass
            assert not [rc for rc in accepted if not rc.is_failure], "connected without a client certificate"
            for c in (spy, own):
                c.disconnect()
                c.loop_stop()
        finally:
            agent.terminate()
            agent.wait(20)
            console.stop()
            shutil.rmtree(base, ignore_errors=True)
