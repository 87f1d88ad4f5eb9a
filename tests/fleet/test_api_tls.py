"""The REST API over https: `fleet api-cert` from the fleet CA, the console serving it, the CLI verifying it."""

from __future__ import annotations

import json
import ssl
import stat
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from edgeops.errors import ConfigError
from edgeops.fleet.cli import fleet, rollout
from edgeops.fleet.config import config_from_dict, load_config
from edgeops.fleet.console import FleetConsole
from tests.support.broker import free_port


@pytest.fixture
def tls_fleet(tmp_path, monkeypatch):
    """`fleet init` + `fleet api-cert 127.0.0.1`, and the console it configures serving https."""
    for var in ("EDGEOPS_FLEET_TOKEN", "EDGEOPS_FLEET_URL", "EDGEOPS_FLEET_CA"):
        monkeypatch.delenv(var, raising=False)
    port = free_port()
    runner = CliRunner()
    out = runner.invoke(fleet, ["init", "--dir", str(tmp_path), "--api-bind", f"127.0.0.1:{port}"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    config_path = tmp_path / "fleet.toml"
    out = runner.invoke(fleet, ["api-cert", "console.example.org", "--config", str(config_path), "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    config = load_config(config_path)
    console = FleetConsole(config, mqtt=False, reconcile=False).start()
    yield {"console": console, "config": config, "config_path": config_path, "result": result, "port": port, "token": config.api.tokens[0]}
    console.stop()


def test_api_cert_configures_https(tls_fleet):
    config, result = tls_fleet["config"], tls_fleet["result"]
    assert result["names"] == ["console.example.org", "127.0.0.1", "localhost"]
    assert config.api.tls and config.path(config.api.cert_file).exists() and config.path(config.api.ca_file).exists()
    assert stat.S_IMODE(config.path(config.api.key_file).stat().st_mode) == 0o600
    assert stat.S_IMODE(tls_fleet["config_path"].stat().st_mode) == 0o600  # still holds the token: never world-readable
    assert tls_fleet["console"].api_url == f"https://127.0.0.1:{tls_fleet['port']}"


def test_console_serves_only_https_verified_by_the_fleet_ca(tls_fleet):
    url = tls_fleet["console"].api_url
    ctx = ssl.create_default_context(cafile=tls_fleet["result"]["ca_file"])
    req = urllib.request.Request(url + "/api/v1/devices", headers={"Authorization": f"Bearer {tls_fleet['token']}"})
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        assert r.status == 200 and json.loads(r.read()) == []
    with pytest.raises(urllib.error.URLError) as e:  # the system CAs do not know the fleet CA
        urllib.request.urlopen(req, context=ssl.create_default_context(), timeout=10)
    assert isinstance(e.value.reason, ssl.SSLCertVerificationError)
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # no plain http on the port
        urllib.request.urlopen(url.replace("https://", "http://") + "/healthz", timeout=10)


def test_cli_speaks_https_with_the_ca(tls_fleet):
    runner = CliRunner()
    url, token, ca = tls_fleet["console"].api_url, tls_fleet["token"], tls_fleet["result"]["ca_file"]
    # from fleet.toml: https, the token and [api] ca_file
    out = runner.invoke(rollout, ["list", "--config", str(tls_fleet["config_path"]), "--json"])
    assert out.exit_code == 0 and json.loads(out.output) == [], out.output
    # from options: --ca, or EDGEOPS_FLEET_CA
    out = runner.invoke(rollout, ["list", "--url", url, "--token", token, "--ca", ca, "--json"])
    assert out.exit_code == 0 and json.loads(out.output) == [], out.output
    out = runner.invoke(rollout, ["list", "--url", url, "--token", token, "--json"], env={"EDGEOPS_FLEET_CA": ca})
    assert out.exit_code == 0 and json.loads(out.output) == [], out.output
    # without the CA: refused, and the message says what to pass
    out = runner.invoke(rollout, ["list", "--url", url, "--token", token])
    assert out.exit_code != 0 and "--ca" in str(out.exception) and "does not trust" in str(out.exception)
    out = runner.invoke(rollout, ["list", "--url", url.replace("https://", "http://"), "--token", token])
    assert out.exit_code != 0 and "https://" in str(out.exception)
    status = runner.invoke(rollout, ["status", "r-missing", "--config", str(tls_fleet["config_path"])])
    assert status.exit_code != 0 and "no such rollout" in str(status.exception)


def test_tls_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="cert_file and key_file"):
        config_from_dict({"api": {"cert_file": "api.crt"}})
    cfg = config_from_dict({"database": {"url": f"sqlite:///{tmp_path / 'f.db'}"}, "api": {"bind": "127.0.0.1:0", "cert_file": "nope.crt", "key_file": "nope.key"}, "base_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"api.cert_file .*nope.crt.*edgeops fleet api-cert"):
        FleetConsole(cfg, mqtt=False, reconcile=False).start()


def test_hil_reaches_an_https_console_with_the_ca(tls_fleet):
    from edgeops.hil.remote import ConsoleHttpError, ConsoleUnreachableError, order_self_test

    url, token, ca = tls_fleet["console"].api_url, tls_fleet["token"], tls_fleet["result"]["ca_file"]
    with pytest.raises(ConsoleHttpError) as answered:  # TLS verified; the console itself answers (no such device)
        order_self_test(url, token, "cam-1", "digits@2.0.0", None, ca_file=ca)
    assert answered.value.status == 404 and "cam-1" in str(answered.value)
    with pytest.raises(ConsoleUnreachableError, match="--ca"):
        order_self_test(url, token, "cam-1", "digits@2.0.0", None)
