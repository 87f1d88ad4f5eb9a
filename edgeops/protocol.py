"""The MQTT protocol between devices and the console, version 1.

Topics (``{d}`` is the device id; each device's ACL confines it to ``edgeops/v1/{d}/#``)::

    edgeops/v1/{d}/state          device → retained, QoS 1: DeviceState; the LWT sets online=false
    edgeops/v1/{d}/events         device → QoS 1: DeviceEvent (install, self-test, probation, rollback…)
    edgeops/v1/{d}/telemetry      device → QoS 1: TelemetryBatch with a per-device sequence number
    edgeops/v1/{d}/cmd            console → device, QoS 1: a DSSE envelope whose payload is a Command
    edgeops/v1/{d}/fetch/req      device → console: FetchRequest (JSON)
    edgeops/v1/{d}/fetch/resp     console → device: one chunk of a repository file (see encode_fetch_response)
    edgeops/v1/{d}/capture        device → console, QoS 1: one chunk of a sealed captured sample (encode_capture_chunk)
    edgeops/v1/{d}/capture/ack    console → device, QoS 1: CaptureAck (stored, or the chunks still missing)

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
from typing import Annotated, Any, Literal, TypeVar

from edgeops.schema import Meta, Schema, SchemaError, field
from edgeops.sketch import MAX_TENSORS, SketchState

PROTOCOL = "edgeops/v1"
# Device ids are topic levels, broker usernames and client ids on every supported broker: no '.'
# (NATS maps MQTT '/' to its subject separator '.', RabbitMQ to its routing-key '.'; a '.' in a
# level closed the connection on NATS and never reached the console on RabbitMQ), no topic
# syntax ('/', '+', '#', '$'), no spaces. As published (JSON Schema: `$` is the end).
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
DEVICE_ID_RULE = "letters, digits, '_' and '-', at most 64, starting with a letter or digit"


def whole(pattern: str) -> str:
    r"""``pattern`` (``^...$``) as Python must read it to match whole strings only.

    Python's ``$`` also matches before a final newline, so ``"d0\n"`` passed the device-id
    pattern (and a sha256 or a fetch path with a trailing newline theirs); msgspec's ``pattern``
    and ``re.match`` use Python's reading. ``(?!\n)`` before the ``$`` leaves only the true end."""
    if not pattern.endswith("$"):
        raise ValueError(f"pattern {pattern!r} does not end with $")
    return pattern[:-1] + r"(?!\n)$"


_DEVICE_ID_RE = re.compile(whole(DEVICE_ID_PATTERN))
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


def capture_topic(device_id: str) -> str:
    """Chunks of captured samples (sealed to the console's capture key)."""
    return f"{PROTOCOL}/{device_id}/capture"


def capture_ack_topic(device_id: str) -> str:
    """The console's answers to captured-sample chunks."""
    return f"{PROTOCOL}/{device_id}/capture/ack"


def parse_topic(topic: str) -> tuple[str, str] | None:
    """Split ``edgeops/v1/{device}/{kind...}`` into (device, kind); None when it is not ours."""
    parts = topic.split("/")
    if len(parts) < 4 or "/".join(parts[:2]) != PROTOCOL or not valid_device_id(parts[2]):
        return None
    return parts[2], "/".join(parts[3:])


# -- Bounds of what a device may send ----------------------------------------------------------
# Every number and string a device sends ends up in a database column (fleet/db.py), and some
# are added up by the rollout gates and /metrics. The schemas below bound each field so that any
# message that parses fits its column on SQLite and PostgreSQL and any sum the console takes
# stays inside int64; a value outside its bound makes the message malformed (counted, dropped).
#
# - Sequence numbers (events/telemetry ``seq``, ``last_command_seq``) are BIGINT columns, never
#   summed: 0 .. 2^63-1.
# - Counts per batch (inferences, errors, NaN, latency histogram counts, dropped batches,
#   rejected messages) are at most 2^31-1: that fits PostgreSQL INTEGER (``dropped_batches``),
#   and a batch covers one telemetry interval (seconds to minutes), so 2^31 inferences in one
#   batch would be over 35 million a second for a minute, far beyond any edge device. The gates
#   and /metrics add counts over the batches of one question: a million batches (a large fleet
#   over a long wave) sum to at most 2.1e15, and it takes over 4 billion batches (2^32) to reach
#   int64's 9.2e18.
# - ``release`` is an INTEGER column: 0 .. 2^31-1.
# - Latencies are at most a day in milliseconds; the agreement is a fraction; timestamps are unix
#   seconds from 0 to 1e10 (year 2286), so a device whose clock is years off still reports (the
#   console counts the skew, see fleet/ingest.py); every float is finite (NaN/Inf are refused).
# - Strings are at most as long as their column and never hold NUL or lone surrogates (PostgreSQL
#   text cannot store them); free text (event details) is bounded and truncated where stored.
# - Lists and maps are bounded in length, so one message cannot carry unbounded work.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
SEQ_MAX = INT64_MAX
COUNT_MAX = INT32_MAX
RELEASE_MAX = INT32_MAX
TIMESTAMP_MAX = 1e10
LATENCY_MS_MAX = 86_400_000.0
FLOAT_MAX = 1.7976931348623157e308  # sys.float_info.max: the bound refuses Inf and NaN
MAX_DETAIL_CHARS = 16_384  # an event's free text (stored truncated to 4,000 characters)
MAX_GATE_DETAIL_CHARS = 4_096
MAX_GATES = 64
MAX_TAGS = 64
MAX_OUTPUTS = 256
MAX_LATENCY_BUCKETS = 64
_TEXT = r"^[^\x00\ud800-\udfff]*$"  # no NUL, no lone surrogates


def _text(max_length: int, min_length: int = 0) -> Any:
    return Annotated[str, Meta(pattern=_TEXT, min_length=min_length, max_length=max_length)]


DeviceId = Annotated[str, Meta(pattern=whole(DEVICE_ID_PATTERN))]
NonNegative = Annotated[int, Meta(ge=0)]
Seq = Annotated[int, Meta(ge=0, le=SEQ_MAX)]
Count = Annotated[int, Meta(ge=0, le=COUNT_MAX)]
Timestamp = Annotated[float, Meta(ge=0.0, le=TIMESTAMP_MAX)]
Finite = Annotated[float, Meta(ge=-FLOAT_MAX, le=FLOAT_MAX)]
NonNegativeFinite = Annotated[float, Meta(ge=0.0, le=FLOAT_MAX)]
LatencyMs = Annotated[float, Meta(ge=0.0, le=LATENCY_MS_MAX)]
Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
ShortText = _text(64)  # a state, an agent version, a gate name
NameText = _text(128)  # a profile, a command id, an output name, a tag


class VersionRef(Schema):
    """A bundle as devices and the console name it.

    Bounded as the registry stores it (name 128, version and sha256 64 characters) rather than by
    the manifest's stricter patterns: an agent names a half-known update by what it has (a
    target path, an empty version), and its events must still get through.
    """

    name: NameText
    version: ShortText
    release: Annotated[int, Meta(ge=0, le=RELEASE_MAX)] = 0
    sha256: ShortText | None = None


class DeviceState(Schema):
    """Retained state of a device. ``state`` is the agent's install state machine state."""

    device_id: DeviceId
    online: bool
    state: ShortText = "idle"
    profile: NameText | None = None
    active: VersionRef | None = None
    previous: VersionRef | None = None
    pending: VersionRef | None = None
    last_command_seq: Seq = 0
    agent_version: ShortText = ""
    tags: Annotated[dict[NameText, _text(256)], Meta(max_length=MAX_TAGS)] = field(default_factory=dict)
    ts: Timestamp = field(default_factory=time.time)


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
    CAPTURE_DROPPED = "capture_dropped"


class GateResult(Schema):
    """One health gate's verdict with the measured value and its threshold."""

    gate: ShortText
    passed: bool
    measured: Finite | None = None
    threshold: Finite | None = None
    detail: _text(MAX_GATE_DETAIL_CHARS) = ""


class DeviceEvent(Schema):
    """One event from a device, QoS 1; ``seq`` de-duplicates redeliveries."""

    device_id: DeviceId
    seq: Seq
    kind: EventKind
    ts: Timestamp = field(default_factory=time.time)
    target: VersionRef | None = None
    command_id: NameText | None = None
    gates: Annotated[list[GateResult], Meta(max_length=MAX_GATES)] = field(default_factory=list)
    detail: _text(MAX_DETAIL_CHARS) = ""


class OutputStats(Schema):
    """Summary statistics of one output over a batch interval, for drift detection."""

    mean: Finite
    std: Finite
    min: Finite
    max: Finite
    nan_count: Count = 0


class TelemetryBatch(Schema):
    """Metrics of one interval from one device; ``seq`` is gap-free per device.

    ``latency_buckets_ms`` are the upper bounds of the histogram buckets and
    ``latency_counts`` the counts per bucket plus one overflow bucket; ``agreement`` is the
    shadow agreement with the previous model during probation; ``dropped_batches`` counts the
    batches the spool dropped (oldest first) since the last report; ``rejected_messages`` the
    malformed, unsigned or refused messages (commands, fetch responses) dropped in the interval.
    """

    device_id: DeviceId
    seq: Seq
    ts_start: Timestamp
    ts_end: Timestamp
    active: VersionRef | None = None
    state: ShortText = "idle"
    inference_count: Count = 0
    error_count: Count = 0
    nan_count: Count = 0
    latency_buckets_ms: Annotated[list[LatencyMs], Meta(max_length=MAX_LATENCY_BUCKETS)] = field(default_factory=list)
    latency_counts: Annotated[list[Count], Meta(max_length=MAX_LATENCY_BUCKETS + 1)] = field(default_factory=list)
    latency_p50_ms: LatencyMs | None = None
    latency_p95_ms: LatencyMs | None = None
    agreement: Fraction | None = None
    outputs: Annotated[dict[NameText, OutputStats], Meta(max_length=MAX_OUTPUTS)] = field(default_factory=dict)
    cpu_percent: NonNegativeFinite | None = None
    memory_rss_mb: NonNegativeFinite | None = None
    temperature_c: Finite | None = None
    dropped_batches: Count = 0
    rejected_messages: Count = 0
    # Drift sketches of the interval's served inferences per input/output name, in the layouts of
    # the active bundle's manifest (edgeops.sketch); each state is bounded there (bins, channels,
    # classes, counts at most COUNT_MAX), and at most MAX_TENSORS of them.
    sketches: Annotated[dict[NameText, SketchState], Meta(max_length=MAX_TENSORS)] = field(default_factory=dict)
    # Data capture (issue 17): samples taken in the interval, samples the capture spool dropped
    # (oldest first) and samples skipped because the policy's daily byte budget was spent.
    captured: Count = 0
    capture_dropped: Count = 0
    capture_over_budget: Count = 0


CommandKind = Literal["assign", "rollback", "self_test", "report", "capture"]
COMMAND_PAYLOAD_TYPE = "application/vnd.edgeops.command+json"
MAX_SELF_TEST_RUNS = 10_000  # timed inferences a self_test command may ask for (the agent's main loop waits on them)
# Optional fields added after protocol v1 shipped. Signers leave them out of the payload when
# unset, so envelopes of commands that do not use them stay byte-identical to earlier ones and
# agents that predate a field keep accepting every command that does not use it.
COMMAND_OPTIONAL_FIELDS = ("runs", "capture")
CAPTURE_KEY_PATTERN = r"^[A-Za-z0-9+/]{43}=$"  # base64 of a 32-byte Curve25519 public key
MAX_CAPTURE_BUDGET = 1 << 40


class CaptureTriggers(Schema):
    """Which served inferences a capture policy takes (any one that holds is the trigger).

    ``min_confidence``: the top-1 probability is below it (classifiers); ``shadow_disagreement``:
    during probation the shadowed previous model picked another class; ``drift``: the device's
    own sketches of the interval so far score at this level or above against the bundle's
    reference (``warn_psi``/``alert_psi``/``alpha``/``min_samples`` as fleet.toml's [drift],
    resolved by the console); ``nonfinite``: an output holds NaN/Inf; ``random_share``: this
    share of all served inferences, whatever they gave.
    """

    min_confidence: Fraction | None = None
    shadow_disagreement: bool = False
    drift: Literal["warn", "alert"] | None = None
    warn_psi: NonNegativeFinite = 0.1
    alert_psi: NonNegativeFinite = 0.25
    alpha: Fraction = 0.01
    min_samples: Count = 200
    nonfinite: bool = False
    random_share: Fraction = 0.0


class CapturePolicy(Schema):
    """What a ``capture`` command turns on (``enabled`` false turns capture off).

    ``sample_rate``: the share of triggering inferences kept; ``min_interval_s``: at most one
    sample this often; ``budget_bytes_per_day``: sealed bytes the device may capture per UTC
    day; ``until``: the policy ends then (unix time); ``public_key``: the console's capture key
    (base64 Curve25519) samples are sealed to on the device (absent: the agent config's).
    """

    policy_id: NameText
    until: Timestamp
    public_key: Annotated[str, Meta(pattern=whole(CAPTURE_KEY_PATTERN))] | None = None
    enabled: bool = True
    triggers: CaptureTriggers = field(default_factory=CaptureTriggers)
    sample_rate: Fraction = 1.0
    min_interval_s: Annotated[float, Meta(ge=0.0, le=86_400.0)] = 0.0
    budget_bytes_per_day: Annotated[int, Meta(ge=1, le=MAX_CAPTURE_BUDGET)] = 64 << 20


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
    target_sha256: Annotated[str, Meta(pattern=whole(r"^[0-9a-f]{64}$"))] | None = None
    target_length: NonNegative | None = None
    bundle: VersionRef | None = None
    rollout_id: str | None = None
    reason: str = ""
    runs: Annotated[int, Meta(ge=1, le=MAX_SELF_TEST_RUNS)] | None = None
    capture: CapturePolicy | None = None  # capture only


class FetchRequest(Schema):
    """Ask for ``length`` bytes of a repository file from ``offset``.

    ``path`` is a TUF metadata file name (e.g. ``timestamp.json``, ``3.snapshot.json``) under
    ``metadata/`` or a consistent-snapshot target path under ``targets/``.
    """

    request_id: NameText
    path: Annotated[str, Meta(pattern=whole(r"^(metadata|targets)/[A-Za-z0-9._@+-][A-Za-z0-9._@+/-]{0,511}$"))]
    offset: Annotated[int, Meta(ge=0, le=INT64_MAX)] = 0
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


CAPTURE_CHUNK_BYTES = 128 * 1024
MAX_CAPTURE_CHUNKS = 4096
Sha256Hex = Annotated[str, Meta(pattern=whole(r"^[0-9a-f]{64}$"))]


class CaptureChunk(Schema):
    """Header of one chunk of a sealed sample; the chunk bytes follow it in the payload.

    ``sample_id`` is the sha256 of the whole sealed sample (what the console stores it under),
    ``index`` counts from 0 of ``total`` chunks, ``size`` is the sealed sample's length. Nothing
    about the sample's content travels in clear.
    """

    sample_id: Sha256Hex
    index: Annotated[int, Meta(ge=0, lt=MAX_CAPTURE_CHUNKS)]
    total: Annotated[int, Meta(ge=1, le=MAX_CAPTURE_CHUNKS)]
    size: Annotated[int, Meta(ge=1, le=MAX_CAPTURE_CHUNKS * CAPTURE_CHUNK_BYTES)]


class CaptureAck(Schema):
    """The console's answer about one sample: ``stored`` (the device deletes it), ``missing``
    (these chunk indices never arrived: send them again) or ``refused`` (it can never be
    stored: not decryptable, over a bound; the device drops it and counts it)."""

    sample_id: Sha256Hex
    status: Literal["stored", "missing", "refused"]
    missing: Annotated[list[Annotated[int, Meta(ge=0, lt=MAX_CAPTURE_CHUNKS)]], Meta(max_length=MAX_CAPTURE_CHUNKS)] = field(default_factory=list)
    detail: _text(1024) = ""


def encode_capture_chunk(header: CaptureChunk, chunk: bytes) -> bytes:
    """Payload of a capture chunk: 4-byte big-endian header length, JSON header, chunk."""
    head = header.to_json().encode()
    return len(head).to_bytes(4, "big") + head + chunk


def decode_capture_chunk(payload: bytes) -> tuple[CaptureChunk, bytes] | None:
    """Split a capture chunk payload; None when malformed (count and drop)."""
    if len(payload) < 4:
        return None
    n = int.from_bytes(payload[:4], "big")
    if n > 1024 or len(payload) < 4 + n:
        return None
    header = parse_message(CaptureChunk, payload[4 : 4 + n])
    if header is None or len(payload) - 4 - n > CAPTURE_CHUNK_BYTES:
        return None
    return header, payload[4 + n :]  # type: ignore[return-value]


def parse_message(model: type[M], payload: bytes) -> M | None:
    """Validate a JSON payload against ``model``; None when malformed (the caller counts and drops)."""
    try:
        return model.parse_json(payload)
    except SchemaError:
        return None
