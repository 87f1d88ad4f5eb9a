"""Files the broker reads (issue 13, finding 5): the password file and the broker's key are
readable by the broker's group and nobody else, every file is replaced atomically, and the
snippets of `fleet init`/`enroll` and `broker-cert` start a real mosquitto together, running as
its own user, which keeps accepting clients after an enrolment and the documented SIGHUP."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import threading

import pytest
from click.testing import CliRunner

from edgeops.fleet.cli import fleet
from tests.fleet.generated_broker import DROPS_TO_MOSQUITTO_USER, GeneratedBroker, cli, fleet_folder
from tests.support.broker import MOSQUITTO, free_port

HAS_MOSQUITTO_USER = any(u.pw_name == "mosquitto" for u in pwd.getpwall())


def _mode(path) -> str:
    return oct(os.stat(path).st_mode & 0o777)


@pytest.mark.skipif(os.geteuid() != 0 or not HAS_MOSQUITTO_USER, reason="giving files to the mosquitto group needs root and a mosquitto user")
def test_secret_broker_files_belong_to_the_broker_group(tmp_path):
    cli("init", "--dir", str(tmp_path))
    fleet_toml = str(tmp_path / "fleet.toml")
    cli("enroll", "cam-1", "--config", fleet_toml)
    out = cli("broker-cert", "localhost", "--port", "18883", "--config", fleet_toml)
    gid = pwd.getpwnam("mosquitto").pw_gid
    enroll = tmp_path / "enroll"
    for secret in (enroll / "mosquitto.passwd", enroll / "broker" / "server.key"):
        assert _mode(secret) == "0o640" and os.stat(secret).st_gid == gid, secret
    for public in ("mosquitto.acl", "broker/security.conf", "broker/password-listener.conf", "broker/tls-listener.conf", "broker/server.crt", "broker/ca.crt"):
        assert _mode(enroll / public) == "0o644", public
    assert any("mosquitto" in n for n in out["notes"])
    assert not list(enroll.rglob(".*.tmp"))  # written through temporary files that were renamed
    # the console's and devices' own keys stay theirs alone
    assert _mode(enroll / "console" / "client.key") == "0o600" and _mode(enroll / "devices" / "cam-1" / "password") == "0o600"


@pytest.mark.skipif(os.geteuid() != 0, reason="chgrp to another group needs root")
def test_broker_group_option_and_config_key(tmp_path):
    other = next(g for g in grp.getgrall() if g.gr_gid != 0)  # any group other than root's
    cli("init", "--dir", str(tmp_path), "--broker-group", other.gr_name)
    assert os.stat(tmp_path / "enroll" / "mosquitto.passwd").st_gid == other.gr_gid
    assert f'broker_group = "{other.gr_name}"' in (tmp_path / "fleet.toml").read_text()
    res = CliRunner().invoke(fleet, ["enroll", "cam-1", "--broker-group", "no-such-group-x", "--config", str(tmp_path / "fleet.toml")])
    assert res.exit_code != 0 and "--broker-group 'no-such-group-x': no such group" in str(res.exception)
    assert not (tmp_path / "enroll" / "devices" / "cam-1").exists()  # refused before anything was written


def test_without_a_broker_user_the_output_says_what_was_done(tmp_path, monkeypatch):
    from edgeops.fleet import broker_files

    monkeypatch.setattr(broker_files, "BROKER_USER", "edgeops-no-such-user")
    out = cli("init", "--dir", str(tmp_path))
    assert any("no 'edgeops-no-such-user' user on this host" in n and "broker_group" in n for n in out["notes"])
    assert _mode(tmp_path / "enroll" / "mosquitto.passwd") == "0o600"


@pytest.mark.slow
@pytest.mark.skipif(MOSQUITTO is None, reason="needs mosquitto")
def test_generated_snippets_run_mosquitto_together_and_survive_enrolment_and_reload():
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    base = fleet_folder()
    try:
        plain, tls_port = free_port(), free_port()
        cli("init", "--dir", str(base), "--broker-url", f"mqtt://127.0.0.1:{plain}")
        fleet_toml = str(base / "fleet.toml")
        cli("broker-cert", "localhost", "--port", str(tls_port), "--no-update-config", "--config", fleet_toml)
        cli("enroll", "dev-a", "--config", fleet_toml)
        cli("enroll", "cam-c", "--method", "cert", "--config", fleet_toml)
        devices = base / "enroll" / "devices"

        def connects(user=None, port=plain, cert_dir=None) -> bool:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user or "x", protocol=mqtt.MQTTv5)
            if cert_dir:
                c.tls_set(ca_certs=str(cert_dir / "ca.crt"), certfile=str(cert_dir / "client.crt"), keyfile=str(cert_dir / "client.key"))
            else:
                c.username_pw_set(user, (devices / user / "password").read_text().strip())
            got, done = [], threading.Event()
            c.on_connect = lambda cl, u, f, rc, p=None: (got.append(rc), done.set())
            c.on_disconnect = lambda cl, u, f, rc, p=None: done.set()
            c.connect("localhost", port)
            c.loop_start()
            done.wait(10)
            c.disconnect()
            c.loop_stop()
            return bool(got) and not got[0].is_failure

        with GeneratedBroker(base / "enroll").start(plain, tls_port) as broker:
            if DROPS_TO_MOSQUITTO_USER:
                assert broker.user() == "mosquitto"  # it reads everything below as its own user
            assert connects("dev-a") and connects(port=tls_port, cert_dir=devices / "cam-c")
            cli("enroll", "dev-b", "--config", fleet_toml)  # rewrites the password file (as root in CI)
            broker.reload()
            assert connects("dev-b") and connects("dev-a"), broker.log.read_text()
            assert broker.proc.poll() is None
    finally:
        shutil.rmtree(base, ignore_errors=True)
