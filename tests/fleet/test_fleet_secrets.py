"""Secrets and defaults of `fleet init/enroll/broker-cert/console-user` (issue 13, finding 9):
no secret lands in a file others can read, the default root is 3 keys with threshold 2 kept
apart from the online keys (and publishing and the repository tools still work with it), and
a certificate device is sent to the TLS listener's port whatever broker-cert was told."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tomllib
from pathlib import Path

from click.testing import CliRunner

from edgeops.cli import cli as edgeops_cli
from edgeops.fleet.cli import fleet
from tests.fleet.generated_broker import cli


def _broker_gid() -> int | None:
    try:
        return pwd.getpwnam("mosquitto").pw_gid
    except KeyError:
        return None


def test_no_secret_is_readable_by_others(tmp_path):
    init = cli("init", "--dir", str(tmp_path))
    fleet_toml = str(tmp_path / "fleet.toml")
    before = tomllib.loads((tmp_path / "fleet.toml").read_text())
    cli("enroll", "dev-1", "--config", fleet_toml)
    cli("broker-cert", "localhost", "--port", "18883", "--config", fleet_toml)  # rewrites fleet.toml, keeps fleet.toml.bak
    cli("enroll", "cam-1", "--method", "cert", "--config", fleet_toml)
    cli("console-user", "console-2", "--config", fleet_toml)
    cli("console-user", "console-3", "--method", "cert", "--config", fleet_toml)
    secrets = {before["api"]["tokens"][0], before["broker"]["password"], (tmp_path / "enroll/devices/dev-1/password").read_text().strip()}
    secrets.add(tomllib.loads((tmp_path / "enroll/consoles/console-2/broker.toml").read_text())["broker"]["password"])
    secrets |= {p.read_text().strip() for p in (tmp_path / "enroll/devices").glob("*/api-token")}  # the agent API's bearer tokens
    assert (tmp_path / "fleet.toml.bak").exists() and init["config"]
    checked = []
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if b"PRIVATE KEY" not in data and not any(s.encode() in data for s in secrets):
            continue
        st = path.stat()
        assert not st.st_mode & 0o007, f"{path}: a secret, readable by everyone ({oct(st.st_mode & 0o777)})"
        if st.st_mode & 0o070:  # only the broker's own key may be shared, and only with the broker's group
            assert path.name == "server.key" and st.st_gid == _broker_gid() and not st.st_mode & 0o020, path
        checked.append(path.relative_to(tmp_path).as_posix())
    assert {"fleet.toml", "fleet.toml.bak", "enroll/broker/server.key", "enroll/ca/ca.key", "enroll/console/client.key", "enroll/devices/dev-1/password",
            "enroll/devices/cam-1/client.key", "enroll/consoles/console-2/broker.toml", "enroll/consoles/console-3/client.key"} <= set(checked)
    assert any(p.startswith("root-keys/root-") for p in checked) and any(p.startswith("keys/timestamp-") for p in checked)


def _edgeops(*args) -> dict:
    res = CliRunner().invoke(edgeops_cli, [*args, "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_init_root_is_three_keys_threshold_two_kept_apart(tmp_path):
    from tests.support.bundles import write_test_bundle

    cli("init", "--dir", str(tmp_path))
    keys, root_keys, repo = tmp_path / "keys", tmp_path / "root-keys", tmp_path / "repo"
    ring = json.loads((keys / "keyring.json").read_text())["roles"]["root"]
    assert len(ring["keys"]) == 3 and ring["threshold"] == 2 and ring["private_dir"] == "../root-keys"
    assert sorted(p.name for p in root_keys.glob("*.key")) == ["root-1.key", "root-2.key", "root-3.key"]
    assert not list(keys.glob("root-*.key")) and len(list(keys.glob("root-*.pub.json"))) == 3  # online keys only; every public key
    assert oct(root_keys.stat().st_mode & 0o777) == "0o700"
    root = json.loads((repo / "metadata" / "1.root.json").read_text())
    assert root["signed"]["roles"]["root"]["threshold"] == 2 and len(root["signatures"]) == 3
    # publishing needs only the online keys; rotating a role signs a new root with the offline ones, found where they are
    bundle = tmp_path / "digits-1.0.0.bundle"
    write_test_bundle(bundle)
    stash = tmp_path / "offline-media"
    shutil.move(root_keys, stash)
    _edgeops("publish", str(bundle), "--repo", str(repo), "--keys", str(keys))
    res = CliRunner().invoke(edgeops_cli, ["keys", "rotate", "timestamp", "--keys", str(keys), "--repo", str(repo)])
    assert res.exit_code != 0 and f"in {root_keys}, 2 needed" in str(res.exception) and "bring the offline keys back" in str(res.exception)
    shutil.move(stash, root_keys)
    CliRunner().invoke(edgeops_cli, ["keys", "rotate", "timestamp", "--keys", str(keys), "--repo", str(repo)], catch_exceptions=False)
    status = _edgeops("repo", "status", "--repo", str(repo))
    assert status["roles"]["root"]["version"] == 2 and [t["name"] for t in status["targets"]] == ["digits"]
    # the device's check from the provisioned root: root 1 -> 2 (threshold 2 of the old and new root), then the bundle
    res = CliRunner().invoke(edgeops_cli, ["verify", str(bundle), "--repo", str(repo), "--root", str(repo / "metadata" / "1.root.json")], catch_exceptions=False)
    assert res.exit_code == 0, res.output


def test_certificate_devices_get_the_tls_listener_port(tmp_path):
    cli("init", "--dir", str(tmp_path), "--broker-url", "mqtt://broker.lan:1884")
    fleet_toml = str(tmp_path / "fleet.toml")
    cli("broker-cert", "broker.lan", "--port", "18884", "--no-update-config", "--config", fleet_toml)
    cam = cli("enroll", "cam-1", "--method", "cert", "--config", fleet_toml)
    dev = cli("enroll", "dev-1", "--config", fleet_toml)
    assert tomllib.loads(Path(cam["agent_toml"]).read_text())["broker"]["url"] == "mqtts://broker.lan:18884"
    assert tomllib.loads(Path(dev["agent_toml"]).read_text())["broker"]["url"] == "mqtt://broker.lan:1884"
    listener = (tmp_path / "enroll/broker/tls-listener.conf").read_text()
    assert "listener 18884\n" in listener and "listener 1884\n" in (tmp_path / "enroll/broker/password-listener.conf").read_text()
    # with --update-config both point at the TLS listener, and password devices keep their own listener
    CliRunner().invoke(fleet, ["broker-cert", "broker.lan", "--port", "18885", "--config", fleet_toml], catch_exceptions=False)
    cam2 = cli("enroll", "cam-2", "--method", "cert", "--config", fleet_toml)
    dev2 = cli("enroll", "dev-2", "--config", fleet_toml)
    assert tomllib.loads(Path(cam2["agent_toml"]).read_text())["broker"]["url"] == "mqtts://broker.lan:18885"
    assert tomllib.loads(Path(dev2["agent_toml"]).read_text())["broker"]["url"] == "mqtt://broker.lan:1884"
    assert oct(os.stat(fleet_toml).st_mode & 0o777) == "0o600"


def test_init_force_leaves_fleet_toml_private(tmp_path):
    cli("init", "--dir", str(tmp_path), "--no-keys")
    (tmp_path / "fleet.toml").chmod(0o644)  # e.g. copied around by hand
    cli("init", "--dir", str(tmp_path), "--no-keys", "--force")
    assert oct((tmp_path / "fleet.toml").stat().st_mode & 0o777) == "0o600"
