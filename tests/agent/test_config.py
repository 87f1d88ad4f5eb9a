"""Config parsing: the example file loads; every bad input names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeops.agent.config import load_config, parse_config
from edgeops.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "agent" / "agent.example.toml"


def base() -> dict:
    return {"device_id": "d1", "data_dir": "/tmp/x", "profile": "x86_64-avx2", "trust": {"root": "root.json", "repository": "http://h/repo/"}}


def test_example_config_loads():
    cfg = load_config(EXAMPLE)
    assert cfg.broker.tls and cfg.broker.port == 8883
    assert cfg.trust.repository == "mqtt"
    assert cfg.probation.window_count == 200


def test_relative_paths_resolve_against_the_file(tmp_path):
    (tmp_path / "a.toml").write_text('device_id = "d1"\ndata_dir = "data"\nprofile = "x86_64-avx2"\n[trust]\nroot = "root.json"\nrepository = "http://h/"\n')
    cfg = load_config(tmp_path / "a.toml")
    assert cfg.data_dir == tmp_path / "data" and cfg.trust.root == tmp_path / "root.json"


def test_api_token_file_resolves_and_allows_an_open_socket_mode(tmp_path):
    (tmp_path / "a.toml").write_text('device_id = "d1"\ndata_dir = "data"\nprofile = "x86_64-avx2"\n[trust]\nroot = "root.json"\nrepository = "http://h/"\n'
                                     '[api]\nlisten = "unix:/run/edgeops/agent.sock"\ntoken_file = "api-token"\nsocket_mode = 0o666\n')
    cfg = load_config(tmp_path / "a.toml")
    assert cfg.api.token_file == tmp_path / "api-token" and cfg.api.socket_mode == 0o666


@pytest.mark.parametrize(
    "change, key",
    [
        ({"device_id": "bad id/with slash"}, "device_id"),
        ({"colour": "red"}, "colour"),
        ({"broker": {"url": "http://broker:1883"}}, "broker.url"),
        ({"broker": {"url": "mqtt://b:1883", "client_cert": "c.pem"}}, "broker"),
        ({"broker": {"url": "mqtt://b:1883", "mqtt_version": "4"}}, "broker.mqtt_version"),
        ({"broker": {"url": "mqtt://b:1883", "failover_urls": ["mqtts://c:8883"]}}, "broker.failover_urls"),
        ({"device_id": "cam.7"}, "device_id"),
        ({"api": {"listen": "0.0.0.0:8765"}}, "api.listen"),
        ({"api": {"listen": "nonsense"}}, "api.listen"),
        ({"api": {"listen": "unix:/run/a.sock", "socket_mode": 0o666}}, "api.socket_mode"),
        ({"api": {"workers": 0}}, "api.workers"),
        ({"api": {"max_body_bytes": -1}}, "api.max_body_bytes"),
        ({"api": {"timeout_s": 0}}, "api.timeout_s"),
        ({"trust": {"root": "r.json", "repository": "ftp://x"}}, "trust.repository"),
        ({"trust": {"root": "r.json", "repository": "mqtt"}}, "(top level)"),
        ({"probation": {"max_error_rate": 2}}, "probation.max_error_rate"),
        ({"telemetry": {"spool_max_bytes": 10}}, "telemetry.spool_max_bytes"),
    ],
)
def test_bad_values_name_the_key(change, key):
    raw = {**base(), **change}
    with pytest.raises(ConfigError) as e:
        parse_config(raw, source="agent.toml")
    assert "agent.toml" in str(e.value) and f"'{key}'" in str(e.value)


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="agent.example.toml"):
        load_config(tmp_path / "nope.toml")


def test_bad_toml(tmp_path):
    (tmp_path / "a.toml").write_text("device_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "a.toml")
