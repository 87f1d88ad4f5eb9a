"""Protocol: topics, message validation, fetch response framing."""

from __future__ import annotations

from edgeops.protocol import (
    Command,
    DeviceState,
    FetchRequest,
    FetchResponse,
    TelemetryBatch,
    cmd_topic,
    decode_fetch_response,
    encode_fetch_response,
    parse_message,
    parse_topic,
    telemetry_topic,
    valid_device_id,
    whole,
)


def test_topics_roundtrip():
    assert parse_topic(telemetry_topic("pi-01")) == ("pi-01", "telemetry")
    assert parse_topic(cmd_topic("pi-01")) == ("pi-01", "cmd")
    assert parse_topic("edgeops/v1/pi-01/fetch/req") == ("pi-01", "fetch/req")
    assert parse_topic("other/v1/pi-01/state") is None
    assert parse_topic("edgeops/v1/+/state") is None
    assert not valid_device_id("a/b") and not valid_device_id("") and valid_device_id("cam_7-lab-2")
    # ids every supported broker accepts: '.' (NATS, RabbitMQ) and topic syntax are refused
    for bad in ("cam.7", "a+b", "a#", "a$b", "$sys", "a b", "-a", "_a", "x" * 65):
        assert not valid_device_id(bad), bad


def test_a_trailing_newline_is_not_part_of_a_valid_id_hash_or_path():
    # Python's `$` also matches before a final newline: "d0\n" passed as a device id (enrolment,
    # commands, every device message), and hashes and fetch paths took one too.
    assert valid_device_id("d0") and not valid_device_id("d0\n")
    assert parse_message(DeviceState, b'{"device_id":"d0","online":true}') is not None
    assert parse_message(DeviceState, b'{"device_id":"d0\\n","online":true}') is None
    good = b'{"request_id":"r","path":"metadata/timestamp.json","offset":0,"length":10}'
    assert parse_message(FetchRequest, good) is not None
    assert parse_message(FetchRequest, good.replace(b'.json"', b'.json\\n"')) is None
    assert whole(r"^[0-9a-f]{64}$") == r"^[0-9a-f]{64}(?!\n)$"


def test_malformed_messages_are_none_not_exceptions():
    assert parse_message(DeviceState, b"{") is None
    assert parse_message(DeviceState, b'{"device_id": "x"}') is None
    assert parse_message(TelemetryBatch, b'{"device_id":"d","seq":-1,"ts_start":0,"ts_end":1}') is None
    assert parse_message(Command, b"\xff\xfe") is None
    ok = parse_message(TelemetryBatch, b'{"device_id":"d","seq":3,"ts_start":0,"ts_end":1}')
    assert ok is not None and ok.seq == 3


def test_fetch_response_framing():
    payload = encode_fetch_response(FetchResponse(request_id="r1", status="ok", offset=10, total=20, eof=True), b"\x00\x01chunk")
    header, chunk = decode_fetch_response(payload)
    assert header.request_id == "r1" and header.eof and chunk == b"\x00\x01chunk"
    assert decode_fetch_response(b"\x00\x00") is None
    assert decode_fetch_response(b"\x00\x00\x00\x05{}") is None
    assert decode_fetch_response(b"\xff\xff\xff\xff" + b"x" * 10) is None
