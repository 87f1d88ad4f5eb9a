"""Scripted devices for fleet end-to-end tests: real paho clients that obey signed commands.

Each device has its own MQTT session (with a retained offline last will), verifies every
command with the trust layer's :class:`CommandVerifier` (signature, addressee, expiry, replay),
checks an assignment against the TUF-verified target (``check_assignment``), downloads the
bundle through the console's MQTT repository server chunk by chunk and checks its sha256, then
plays the install/probation story its ``behaviour`` says for that version:

- ``good``: installed, self-test passed, activated, telemetry, probation passed, committed
- ``nan``:  installed, self-test passed, activated, telemetry full of NaN, probation failed,
  rolled back (active version unchanged)

A rollback command puts the previous version back and reports ``rolled_back``. The real agent
(edgeops.agent) replaces this in the simulator tests; this one keeps the console's e2e tests
independent of it.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
import uuid
from pathlib import Path

from edgeops.protocol import (
    Command,
    DeviceEvent,
    DeviceState,
    EventKind,
    FetchRequest,
    GateResult,
    TelemetryBatch,
    VersionRef,
    cmd_topic,
    decode_fetch_response,
    events_topic,
    fetch_request_topic,
    fetch_response_topic,
    state_topic,
    telemetry_topic,
)


class SharedTrust:
    """One TUF client over the repository folder shared by all scripted devices (lock-protected)."""

    def __init__(self, repo_dir: Path, cache_dir: Path):
        from edgeops.trust.client import TrustClient
        from edgeops.trust.transport import DirectoryTransport

        cache_dir.mkdir(parents=True, exist_ok=True)
        self.client = TrustClient(cache_dir, DirectoryTransport(repo_dir), root=repo_dir / "metadata" / "1.root.json")
        self.lock = threading.Lock()

    def record(self, name: str, version: str):
        with self.lock:
            self.client.refresh()
            return self.client.get_bundle(name, version)


class ScriptedDevice:
    """One device (see module doc). ``received`` keeps every verified command."""

    def __init__(self, device_id: str, port: int, keys, trust: SharedTrust, state_dir: Path, behaviour: dict[str, str] | None = None, active: str = "digits@1.0.0", username: str | None = None, password: str | None = None, protocol: str = "5", profile: str = "x86", latency: dict[str, float] | None = None):
        from edgeops.trust.commands import CommandVerifier

        self.device_id = device_id
        self.port = port
        self.trust = trust
        self.behaviour = behaviour or {}
        self.profile = profile
        self.latency = latency or {}  # version -> the p95 its telemetry reports (default 4.0 ms)
        self._tel_lock = threading.Lock()  # telemetry() is called from the worker and from tests
        self.active = active
        self.previous: str | None = None
        self.verifier = CommandVerifier(device_id, keys, state_dir / f"{device_id}.cmdseq.json")
        self.received: list[Command] = []
        self.rejected: list[str] = []
        self.username, self.password, self.protocol = username, password, protocol
        self.event_seq = 0
        self.tel_seq = 0
        self._work: queue.Queue = queue.Queue()
        self._responses: dict[str, tuple] = {}
        self._cond = threading.Condition()
        self.client = None
        self._worker = threading.Thread(target=self._run, daemon=True, name=f"dev-{device_id}")

    # -- MQTT --------------------------------------------------------------------------------
    def _state(self, online: bool) -> bytes:
        ref = lambda v: VersionRef(name=v.split("@")[0], version=v.split("@")[1]) if v else None  # noqa: E731
        return DeviceState(device_id=self.device_id, online=online, state="idle", profile=self.profile, active=ref(self.active), previous=ref(self.previous), last_command_seq=self.verifier.last_seq()).to_json().encode()

    def start(self) -> "ScriptedDevice":
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        proto = mqtt.MQTTv5 if self.protocol == "5" else mqtt.MQTTv311
        kw = {} if self.protocol == "5" else {"clean_session": False}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{self.device_id}", protocol=proto, **kw)
        if self.username:
            c.username_pw_set(self.username, self.password)
        c.will_set(state_topic(self.device_id), self._state(False), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        self.connected = threading.Event()
        c.connect("127.0.0.1", self.port, keepalive=30)
        c.loop_start()
        self.client = c
        self._worker.start()
        if not self.connected.wait(15):
            raise RuntimeError(f"{self.device_id}: no connection to the broker")
        return self

    def _on_connect(self, client, userdata, flags, rc, props=None):
        client.subscribe([(cmd_topic(self.device_id), 1), (fetch_response_topic(self.device_id), 1)])
        client.publish(state_topic(self.device_id), self._state(True), qos=1, retain=True)
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        if msg.topic.endswith("/fetch/resp"):
            decoded = decode_fetch_response(msg.payload)
            if decoded:
                with self._cond:
                    self._responses[decoded[0].request_id] = decoded
                    self._cond.notify_all()
        else:
            self._work.put(msg.payload)

    def stop(self) -> None:
        self._work.put(None)
        if self.client:
            self.client.disconnect()
            self.client.loop_stop()

    # -- reporting ---------------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def event(self, kind: EventKind, cmd: Command | None = None, target: str | None = None, detail: str = "", gates=()) -> None:
        self.event_seq += 1
        t = VersionRef(name=target.split("@")[0], version=target.split("@")[1]) if target else None
        ev = DeviceEvent(device_id=self.device_id, seq=self.event_seq, kind=kind, command_id=cmd.command_id if cmd else None, target=t, detail=detail, gates=list(gates))
        self._publish(events_topic(self.device_id), ev.to_json().encode())

    def telemetry(self, version: str, nans: int = 0, p95: float | None = None) -> None:
        p95 = self.latency.get(version, 4.0) if p95 is None else p95
        with self._tel_lock:
            self.tel_seq += 1
            now = time.time()
            n, v = version.split("@")
            b = TelemetryBatch(device_id=self.device_id, seq=self.tel_seq, ts_start=now - 1, ts_end=now, active=VersionRef(name=n, version=v), state="probation", inference_count=50, nan_count=nans, latency_p95_ms=p95, agreement=0.0 if nans else 1.0)
            self._publish(telemetry_topic(self.device_id), b.to_json().encode())

    def report_state(self) -> None:
        self._publish(state_topic(self.device_id), self._state(True), retain=True)

    # -- behaviour ---------------------------------------------------------------------------
    def fetch(self, path: str, length: int, chunk_timeout_s: float = 5.0, deadline_s: float = 120.0) -> bytes:
        """Download a repository file through the console, one chunk per request.

        A chunk not answered within ``chunk_timeout_s`` is asked for again from the same offset,
        as the real agent does: a request published while the console was down (a restart test
        kills it mid-rollout) is never answered.
        """
        out = b""
        last_progress = time.monotonic()
        while len(out) < length:
            rid = uuid.uuid4().hex
            req = FetchRequest(request_id=rid, path=path, offset=len(out), length=64 * 1024)
            self._publish(fetch_request_topic(self.device_id), req.to_json().encode())
            with self._cond:
                answered = self._cond.wait_for(lambda: rid in self._responses, timeout=chunk_timeout_s)
                if not answered:
                    if time.monotonic() - last_progress > deadline_s:
                        raise RuntimeError(f"{self.device_id}: no fetch response for {path} in {deadline_s:.0f}s")
                    continue
                header, chunk = self._responses.pop(rid)
            last_progress = time.monotonic()
            if header.status != "ok":
                raise RuntimeError(f"{self.device_id}: fetch {path}: {header.status} {header.error}")
            out += chunk
            if header.eof:
                break
        return out

    def _run(self) -> None:
        from edgeops.errors import TrustError
        from edgeops.trust.client import target_file_path
        from edgeops.trust.commands import check_assignment

        while True:
            payload = self._work.get()
            if payload is None:
                return
            try:
                cmd = self.verifier.verify(payload)
            except TrustError as e:
                self.rejected.append(type(e).__name__)
                self.event(EventKind.COMMAND_REJECTED, detail=str(e))
                continue
            self.received.append(cmd)
            target = f"{cmd.bundle.name}@{cmd.bundle.version}" if cmd.bundle else None
            if cmd.kind == "rollback":
                if target and self.active != target:
                    self.previous, self.active = self.active, target
                self.event(EventKind.ROLLED_BACK, cmd, target, "rollback ordered by the console")
                self.report_state()
                continue
            rec = self.trust.record(cmd.bundle.name, cmd.bundle.version)
            check_assignment(cmd, rec)
            self.event(EventKind.COMMAND_ACCEPTED, cmd, target)
            self.event(EventKind.FETCH_STARTED, cmd, target)
            data = self.fetch(target_file_path(rec.name, rec.sha256), rec.length)
            if hashlib.sha256(data).hexdigest() != rec.sha256 or len(data) != rec.length:
                self.event(EventKind.BUNDLE_REJECTED, cmd, target, "hash mismatch")
                continue
            self.event(EventKind.INSTALLED, cmd, target)
            self.event(EventKind.SELF_TEST_PASSED, cmd, target)
            self.event(EventKind.ACTIVATED, cmd, target)
            old = self.active
            if self.behaviour.get(target, "good") == "nan":
                self.telemetry(target, nans=50)
                failed = [GateResult(gate="max_nan", passed=False, measured=50, threshold=0)]
                self.event(EventKind.PROBATION_FAILED, cmd, target, "outputs are NaN", failed)
                self.event(EventKind.ROLLED_BACK, cmd, target, f"back on {old}", failed)  # the real agent names the failing gates here too (agent/machine.py)
                self.report_state()
            else:
                self.telemetry(target)
                self.previous, self.active = old, target
                self.event(EventKind.PROBATION_PASSED, cmd, target)
                self.event(EventKind.COMMITTED, cmd, target)
                self.report_state()
