"""The MQTT protocol between devices and the console, version 1.

Topics (``{d}`` is the device id; each device's ACL confines it to ``edgeops/v1/{d}/#``)::

    edgeops/v1/{d}/state          device → retained, QoS 1: DeviceState; the LWT sets online=false
    edgeops/v1/{d}/events         device → QoS 1: DeviceEvent (install, self-test, probation, rollback…)
    edgeops/v1/{d}/telemetry      device → QoS 1: TelemetryBatch with a per-device sequence number
    edgeops/v1/{d}/cmd            console → device, QoS 1: a DSSE envelope whose payload is a Command
    edgeops/v1/{d}/fetch/req      device → console: FetchRequest (JSON)
    edgeops/v1/{d}/fetch/resp     console → device: one chunk of a repository file (see encode_fetch_response)

Every message body is JSON except fetch responses, which carry a length-prefixed JSON header
(FetchResponse) followed by the raw chunk. Request/response is correlated by ``request_id`` in
the body rather than MQTT 5 properties, so the protocol runs unchanged on MQTT 3.1.1 brokers
(the embedded amqtt broker) and MQTT 5 brokers (mosquitto, EMQX, RabbitMQ, NATS). Receivers
validate with these models; anything that does not validate is counted and dropped, never
raised into the receive loop.
"""

from __future__ import annotations

import re
import time
from enum import Enum
from typing import Annotated, Literal, TypeVar

from edgeops.schema import Meta, Schema, SchemaError, field

PROTOCOL = "edgeops/v1"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
FETCH_CHUNK_BYTES = 256 * 1024
M = TypeVar("M", bound=Schema)


def valid_device_id(device_id: str) -> bool:
    """True when the id is usable in a topic and as a broker username."""
    return bool(_DEVICE_ID_RE.match(device_id))


def state_topic(device_id: str) -> str:
    """Retained device state."""
    return f"{PROTOCOL}/{device_id}/state"


def events_topic(device_id: str) -> str:
    """Device events."""
    return f"{PROTOCOL}/{device_id}/events"


def telemetry_topic(device_id: str) -> str:
    """Telemetry batches."""
    return f"{PROTOCOL}/{device_id}/telemetry"


def cmd_topic(device_id: str) -> str:
    """Signed commands to one device."""
    return f"{PROTOCOL}/{device_id}/cmd"


def fetch_request_topic(device_id: str) -> str:
    """Repository file requests from one device."""
    return f"{PROTOCOL}/{device_id}/fetch/req"


def fetch_response_topic(device_id: str) -> str:
    """Repository file chunks to one device."""
    return f"{PROTOCOL}/{device_id}/fetch/resp"


def parse_topic(topic: str) -> tuple[str, str] | None:
    """Split ``edgeops/v1/{device}/{kind...}`` into (device, kind); None when it is not ours."""
    parts = topic.split("/")
    if len(parts) < 4 or "/".join(parts[:2]) != PROTOCOL or not valid_device_id(parts[2]):
        return None
    return parts[2], "/".join(parts[3:])


DeviceId = Annotated[str, Meta(pattern=DEVICE_ID_PATTERN)]
NonNegative = Annotated[int, Meta(ge=0)]


class VersionRef(Schema):
    """A bundle as devices and the console name it."""

    name: str
    version: str
    release: int = 0
    sha256: str | None = None


class DeviceState(Schema):
    """Retained state of a device. ``state`` is the agent's install state machine state."""

    device_id: DeviceId
    online: bool
    state: str = "idle"
    profile: str | None = None
    active: VersionRef | None = None
    previous: VersionRef | None = None
    pending: VersionRef | None = None
    last_command_seq: int = 0
    agent_version: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)


class EventKind(str, Enum):
    """What happened on a device."""

    COMMAND_ACCEPTED = "command_accepted"
    COMMAND_REJECTED = "command_rejected"
    FETCH_STARTED = "fetch_started"
    BUNDLE_REJECTED = "bundle_rejected"
    INSTALLED = "installed"
    SELF_TEST_PASSED = "self_test_passed"
    SELF_TEST_FAILED = "self_test_failed"
    ACTIVATED = "activated"
    PROBATION_PASSED = "probation_passed"
    PROBATION_FAILED = "probation_failed"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    INSTALL_FAILED = "install_failed"
    TELEMETRY_DROPPED = "telemetry_dropped"
    AGENT_STARTED = "agent_started"


class GateResult(Schema):
    """One health gate's verdict with the measured value and its threshold."""

    gate: str
    passed: bool
    measured: float | None = None
    threshold: float | None = None
    detail: str = ""


class DeviceEvent(Schema):
    """One event from a device, QoS 1; ``seq`` de-duplicates redeliveries."""

    device_id: DeviceId
    seq: NonNegative
    kind: EventKind
    ts: float = field(default_factory=time.time)
    target: VersionRef | None = None
    command_id: str | None = None
    gates: list[GateResult] = field(default_factory=list)
    detail: str = ""


class OutputStats(Schema):
    """Summary statistics of one output over a batch interval, for drift detection."""

    mean: float
    std: float
    min: float
    max: float
    nan_count: int = 0


class TelemetryBatch(Schema):
    """Metrics of one interval from one device; ``seq`` is gap-free per device.

    ``latency_buckets_ms`` are the upper bounds of the histogram buckets and
    ``latency_counts`` the counts per bucket plus one overflow bucket; ``agreement`` is the
    shadow agreement with the previous model during probation; ``dropped_batches`` counts the
    batches the spool dropped (oldest first) since the last report; ``rejected_messages`` the
    malformed, unsigned or refused messages (commands, fetch responses) dropped in the interval.
    """

    device_id: DeviceId
    seq: NonNegative
    ts_start: float
    ts_end: float
    active: VersionRef | None = None
    state: str = "idle"
    inference_count: NonNegative = 0
    error_count: NonNegative = 0
    nan_count: NonNegative = 0
    latency_buckets_ms: list[float] = field(default_factory=list)
    latency_counts: list[int] = field(default_factory=list)
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    agreement: float | None = None
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    cpu_percent: float | None = None
    memory_rss_mb: float | None = None
    temperature_c: float | None = None
    dropped_batches: NonNegative = 0
    rejected_messages: NonNegative = 0


CommandKind = Literal["assign", "rollback", "self_test", "report"]
COMMAND_PAYLOAD_TYPE = "application/vnd.edgeops.command+json"
MAX_SELF_TEST_RUNS = 10_000  # timed inferences a self_test command may ask for (the agent's main loop waits on them)
# Optional fields added after protocol v1 shipped. Signers leave them out of the payload when
# unset, so envelopes of commands that do not use them stay byte-identical to earlier ones and
# agents that predate a field keep accepting every command that does not use it.
COMMAND_OPTIONAL_FIELDS = ("runs",)


class Command(Schema):
    """A console → device command; travels as the payload of a DSSE envelope.

    ``target_name``/``target_sha256``/``target_length`` (assign, self_test) must match a
    TUF-verified target exactly. ``seq`` is monotonic per device; ``expires`` is a unix time.
    ``runs`` (self_test only, optional) is how many timed inferences the latency figures use;
    without it the agent uses its ``self_test.latency_runs``.
    """

    device_id: str  # a device id, or 'cohort:<name>' for a group
    command_id: Annotated[str, Meta(min_length=1, max_length=128)]
    seq: Annotated[int, Meta(ge=1)]
    expires: float
    kind: CommandKind
    target_name: str | None = None
    target_sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")] | None = None
    target_length: NonNegative | None = None
    bundle: VersionRef | None = None
    rollout_id: str | None = None
    reason: str = ""
    runs: Annotated[int, Meta(ge=1, le=MAX_SELF_TEST_RUNS)] | None = None


class FetchRequest(Schema):
    """Ask for ``length`` bytes of a repository file from ``offset``.

    ``path`` is a TUF metadata file name (e.g. ``timestamp.json``, ``3.snapshot.json``) under
    ``metadata/`` or a consistent-snapshot target path under ``targets/``.
    """

    request_id: str
    path: Annotated[str, Meta(pattern=r"^(metadata|targets)/[A-Za-z0-9._@+-][A-Za-z0-9._@+/-]{0,511}$")]
    offset: NonNegative = 0
    length: Annotated[int, Meta(ge=1, le=4 * FETCH_CHUNK_BYTES)] = FETCH_CHUNK_BYTES


class FetchResponse(Schema):
    """Header of one fetch response chunk; the chunk bytes follow it in the payload."""

    request_id: str
    status: Literal["ok", "not_found", "error"]
    offset: int = 0
    total: int = 0
    eof: bool = False
    error: str = ""


def encode_fetch_response(header: FetchResponse, chunk: bytes = b"") -> bytes:
    """Payload of a fetch response: 4-byte big-endian header length, JSON header, chunk."""
    head = header.to_json().encode()
    return len(head).to_bytes(4, "big") + head + chunk


def decode_fetch_response(payload: bytes) -> tuple[FetchResponse, bytes] | None:
    """Split a fetch response payload; None when malformed (count and drop)."""
    if len(payload) < 4:
        return None
    n = int.from_bytes(payload[:4], "big")
    if n > 4096 or len(payload) < 4 + n:
        return None
    header = parse_message(FetchResponse, payload[4 : 4 + n])
    if header is None:
        return None
    return header, payload[4 + n :]  # type: ignore[return-value]


def parse_message(model: type[M], payload: bytes) -> M | None:
    """Validate a JSON payload against ``model``; None when malformed (the caller counts and drops)."""
    try:
        return model.parse_json(payload)
    except SchemaError:
        return None
