"""Helpers for the agent tests: a real signed repository, signed commands, agent configs,
a minimal MQTT repository responder (the console's side of fetch/req), and a telemetry listener.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from edgeops.protocol import Command, FetchRequest, FetchResponse, VersionRef, encode_fetch_response, parse_message
from edgeops.trust.commands import sign_command
from edgeops.trust.errors import TrustError
from edgeops.trust.keys import Keyring
from edgeops.trust.repository import Repository
from edgeops.trust.transport import DirectoryTransport, check_repo_path

from tests.support.bundles import sample_inputs, write_test_bundle
from tests.support.wait import wait_for  # noqa: F401  (agent tests import it from here; its one home is tests/support/wait.py)

DEVICE = "dev-1"


@dataclass
class Published:
    """A bundle as published: what an assignment names."""

    target_name: str
    sha256: str
    length: int
    name: str
    version: str
    release: int
    bundle_path: Path


class TrustFixture:
    """Keys, a TUF repository, bundles published into it, and signed commands."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.keys_dir = self.root / "keys"
        self.repo_dir = self.root / "repo"
        self.ring = Keyring.create(self.keys_dir, root_keys=1, root_threshold=1)
        self.repo = Repository.init(self.repo_dir, self.ring)
        self.signer = self.ring.signers("command")[0]
        self._seq = itertools.count(1)

    @property
    def root_json(self) -> Path:
        """The trusted root a device is provisioned with."""
        return self.repo_dir / "metadata" / "root.json"

    @property
    def command_key(self) -> Path:
        """The console's command public key file."""
        return self.keys_dir / f"{self.ring.role('command').keys[0]}.pub.json"

    def publish(self, version: str, release: int, variant: str = "good", **kw) -> Published:
        """Write a test bundle and publish it."""
        path = self.root / "bundles" / f"digits-{version}.bundle"
        write_test_bundle(path, version=version, release=release, variant=variant, **kw)
        return self.publish_file(path)

    def publish_file(self, path: Path) -> Published:
        """Publish a bundle file that exists."""
        r = self.repo.publish(path, self.ring)
        c = r.custom
        return Published(r.target, r.sha256, r.length, c["name"], c["version"], c["release"], Path(path))

    def target_file(self, pub: Published) -> Path:
        """The bundle file inside the repository (to tamper with)."""
        from edgeops.trust.client import target_file_path

        return self.repo_dir / target_file_path(pub.target_name, pub.sha256)

    def command(self, kind: str, pub: Published | None = None, device_id: str = DEVICE, expires_in: float = 3600, seq: int | None = None, command_id: str | None = None) -> bytes:
        """A signed DSSE command envelope."""
        cmd = Command(
            device_id=device_id,
            command_id=command_id or uuid.uuid4().hex[:12],
            seq=seq if seq is not None else next(self._seq),
            expires=time.time() + expires_in,
            kind=kind,
            target_name=pub.target_name if pub else None,
            target_sha256=pub.sha256 if pub else None,
            target_length=pub.length if pub else None,
            bundle=VersionRef(name=pub.name, version=pub.version, release=pub.release, sha256=pub.sha256) if pub else None,
        )
        return sign_command(cmd, self.signer)


def agent_config_dict(tmp: Path, tf: TrustFixture, device_id: str = DEVICE, broker_url: str | None = None, repository: str | None = None, mqtt_version: str = "5", api: str = "", **sections) -> dict:
    """A config dict for an agent in ``tmp`` (fast probation and telemetry for tests)."""
    cfg: dict = {
        "device_id": device_id,
        "data_dir": str(tmp / f"data-{device_id}"),
        "profile": "x86_64-avx512-vnni",
        "trust": {"root": str(tf.root_json), "command_keys": [str(tf.command_key)], "repository": repository or ("mqtt" if broker_url else "http://127.0.0.1:9/unused")},
        "api": {"listen": api, "shadow_sample_rate": 1.0},
        "telemetry": {"interval_s": 0.5},
        "self_test": {"latency_runs": 10},
        "probation": {"window_count": 20, "window_seconds": 0.3, "synthetic_interval_s": 0.05, "min_shadow_samples": 5},
    }
    if broker_url:
        cfg["broker"] = {"url": broker_url, "mqtt_version": mqtt_version, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0}
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def to_toml(d: dict) -> str:
    """A tiny TOML writer for config dicts (strings, numbers, bools, lists, one level of tables)."""

    def val(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + "}"
        raise TypeError(type(v))

    top = [f"{k} = {val(v)}" for k, v in d.items() if not isinstance(v, dict) or k == "tags"]
    tables = [f"\n[{k}]\n" + "\n".join(f"{kk} = {val(vv)}" for kk, vv in v.items()) for k, v in d.items() if isinstance(v, dict) and k != "tags"]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"


class RepoResponder:
    """The console side of the MQTT fetch protocol, serving a repository folder (for tests).

    ``drop_first`` silently drops that many requests (a lost message), to show the device
    re-requests from the last offset.
    """

    def __init__(self, broker_url: str, repo_dir: Path, mqtt_version: str = "5", drop_first: int = 0):
        import paho.mqtt.client as mqtt
        from urllib.parse import urlparse

        u = urlparse(broker_url)
        self.repo = DirectoryTransport(repo_dir)
        self.repo_dir = Path(repo_dir)
        self.drop = drop_first
        self.requests = 0
        proto = mqtt.MQTTv5 if mqtt_version == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"responder-{uuid.uuid4().hex[:6]}", protocol=proto)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe("edgeops/v1/+/fetch/req", qos=1)
        self.client.connect(u.hostname, u.port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        req = parse_message(FetchRequest, msg.payload)
        if req is None:
            return
        self.requests += 1
        if self.drop > 0:
            self.drop -= 1
            return
        device = msg.topic.split("/")[2]
        try:
            path = self.repo_dir / check_repo_path(req.path)
            data = path.read_bytes()
            chunk = data[req.offset : req.offset + req.length]
            header = FetchResponse(request_id=req.request_id, status="ok", offset=req.offset, total=len(data), eof=req.offset + len(chunk) >= len(data))
        except (TrustError, FileNotFoundError) as e:
            header, chunk = FetchResponse(request_id=req.request_id, status="not_found", error=str(e)), b""
        client.publish(f"edgeops/v1/{device}/fetch/resp", encode_fetch_response(header, chunk), qos=1)

    def stop(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


class Listener:
    """A paho subscriber to a device's events, telemetry and state (the console side in tests)."""

    def __init__(self, broker_url: str, device_id: str = "+", mqtt_version: str = "5"):
        import paho.mqtt.client as mqtt
        from urllib.parse import urlparse

        u = urlparse(broker_url)
        self.events: list[dict] = []
        self.telemetry: dict[int, dict] = {}
        self.telemetry_received = 0
        self.states: list[dict] = []
        self._lock = threading.Lock()
        proto = mqtt.MQTTv5 if mqtt_version == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"listener-{uuid.uuid4().hex[:6]}", protocol=proto)
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_connect = lambda c, *a: c.subscribe(f"edgeops/v1/{device_id}/#", qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.reconnect_delay_set(0.2, 1.0)
        self.client.connect(u.hostname, u.port)
        self.client.loop_start()
        self._subscribed.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        kind = msg.topic.split("/", 3)[3]
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            if kind == "events":
                self.events.append(doc)
            elif kind == "telemetry":
                self.telemetry_received += 1
                self.telemetry.setdefault(doc["seq"], doc)
            elif kind == "state":
                self.states.append(doc)

    def event_kinds(self) -> list[str]:
        """Kinds of the events received so far (de-duplicated by seq, in seq order)."""
        with self._lock:
            by_seq = {e["seq"]: e for e in self.events}
        return [by_seq[s]["kind"] for s in sorted(by_seq)]

    def find_event(self, kind: str) -> dict | None:
        """The last event of ``kind``."""
        with self._lock:
            found = [e for e in self.events if e["kind"] == kind]
        return found[-1] if found else None

    def wait_event(self, kind: str, timeout: float = 30.0) -> dict:
        """Block until an event of ``kind`` arrives."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            e = self.find_event(kind)
            if e:
                return e
            time.sleep(0.05)
        raise AssertionError(f"no {kind} event within {timeout}s; got {self.event_kinds()}")

    def stop(self) -> None:
        """Disconnect."""
        self.client.loop_stop()
        self.client.disconnect()


class TcpGate:
    """A TCP relay in front of a broker whose door the test can shut.

    While shut it refuses new connections (accepts and closes them at once); connections end
    when either side closes. The outage test puts it between the agent and the broker so the
    console-side subscriber is surely back before the agent reconnects (the broker restarts
    without persistence, so a message published before the subscriber is back would be lost
    to the test's subscriber, not by the agent).
    """

    def __init__(self, target_port: int):
        import socket

        from tests.support.broker import free_port

        self.target_port = target_port
        self.port = free_port()
        self.open = True
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", self.port))
        self._sock.listen(16)
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        """mqtt://127.0.0.1:port of the gate."""
        return f"mqtt://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        import socket

        while not self._stop:
            try:
                down, _ = self._sock.accept()
            except OSError:
                return
            if not self.open:
                down.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                down.close()
                continue
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        """Stop the relay."""
        self._stop = True
        self._sock.close()


def stop_agent(proc: subprocess.Popen) -> None:
    """Stop a real `edgeops agent run` process as systemd would: SIGTERM, then SIGKILL after 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class TriggeredTraffic:
    """Live inference traffic on a background thread with an input past ``trigger`` (the test
    models' misbehaving variants fault only there): what probation must catch."""

    def __init__(self, client, trigger: float):
        self._client = client
        self._x = sample_inputs(1)
        self._x[0, 0] = trigger * 5
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._client.infer({"input": self._x})
            except Exception:  # a faulting model answers errors: keep sending
                pass

    def __enter__(self) -> "TriggeredTraffic":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
