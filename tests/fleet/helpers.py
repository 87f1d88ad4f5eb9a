"""Message builders and a recording publisher for fleet tests that run without a broker."""

from __future__ import annotations

import json
import time

from edgeops.protocol import DeviceEvent, DeviceState, EventKind, TelemetryBatch, VersionRef, events_topic, state_topic, telemetry_topic


def state(device, active=None, online=True, previous=None, ts=None, **kw) -> tuple[str, bytes]:
    """(topic, payload) of a DeviceState."""
    def ref(v):
        return VersionRef(name=v.split("@")[0], version=v.split("@")[1]) if v else None

    msg = DeviceState(device_id=device, online=online, active=ref(active), previous=ref(previous), ts=ts or time.time(), **kw)
    return state_topic(device), msg.to_json().encode()


def event(device, seq, kind, command_id=None, target=None, detail="") -> tuple[str, bytes]:
    """(topic, payload) of a DeviceEvent."""
    t = VersionRef(name=target.split("@")[0], version=target.split("@")[1]) if target else None
    msg = DeviceEvent(device_id=device, seq=seq, kind=EventKind(kind), command_id=command_id, target=t, detail=detail)
    return events_topic(device), msg.to_json().encode()


def telemetry(device, seq, version="digits@1.0.0", inferences=100, errors=0, nans=0, p95=5.0, agreement=None, p50=None) -> tuple[str, bytes]:
    """(topic, payload) of a TelemetryBatch."""
    now = time.time()
    n, v = version.split("@")
    msg = TelemetryBatch(
        device_id=device, seq=seq, ts_start=now - 10, ts_end=now, active=VersionRef(name=n, version=v), inference_count=inferences, error_count=errors, nan_count=nans, latency_p95_ms=p95, agreement=agreement,
        latency_p50_ms=p50,
    )
    return telemetry_topic(device), msg.to_json().encode()


class _Acked:
    def wait(self, timeout: float) -> bool:
        return True


class RecordingPublisher:
    """A publish function that keeps (topic, payload) instead of sending (reconciler tests without a broker)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def __call__(self, topic: str, payload: bytes):
        self.messages.append((topic, payload))
        return _Acked()

    def commands(self, verify_keys=None) -> list:
        """The published commands (DSSE payloads decoded; signatures checked when keys are given)."""
        from edgeops.trust.commands import verify_envelope

        out = []
        for _, payload in self.messages:
            if verify_keys is not None:
                out.append(verify_envelope(payload, verify_keys))
            else:
                import base64

                from edgeops.protocol import Command

                out.append(Command.parse_json(base64.b64decode(json.loads(payload)["payload"])))
        return out
