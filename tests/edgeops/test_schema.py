"""edgeops.schema: the base of the shared schemas. Bad input is a SchemaError naming the dotted
key, the kind of problem and, for a fixed set of values, what is allowed."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeops.protocol import Command, DeviceEvent, FetchRequest, TelemetryBatch, parse_message
from edgeops.schema import FieldError, Meta, Schema, SchemaError, allowed_values, field, nested_schema


class Colour(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


class Inner(Schema):
    count: Annotated[int, Meta(ge=1)] = 1
    path: Path | None = None
    formats: list[Literal["onnx", "tflite"]] = field(default_factory=list)
    url: str = "mqtt://h"

    def __post_init__(self) -> None:
        if not self.url.startswith("mqtt://"):
            raise FieldError("url", f"{self.url!r} must start with mqtt://")


class Outer(Schema):
    __schema_exclude__: ClassVar[tuple[str, ...]] = ("source",)

    name: Annotated[str, Meta(pattern=r"^[a-z]+$")]
    colour: Colour = Colour.RED
    inner: Inner = field(default_factory=Inner)
    items: list[Inner] = field(default_factory=list)
    ratio: Annotated[float, Meta(gt=0, le=1)] = 0.5
    source: str = ""

    def __post_init__(self) -> None:
        if self.name == "both" and self.inner.count > 1:
            raise ValueError("a rule across fields")


def error(data) -> SchemaError:
    with pytest.raises(SchemaError) as e:
        Outer.parse(data)
    return e.value


@pytest.mark.parametrize(
    "data, key, kind, words",
    [
        ({"name": "a", "extra": 1}, "extra", "unknown", "unknown key"),
        ({"name": "a", "inner": {"typo": 1}}, "inner.typo", "unknown", "unknown key"),
        ({}, "name", "missing", "required key is missing"),
        ({"name": "A"}, "name", "invalid", "should match the pattern"),
        ({"name": "a", "inner": {"count": 0}}, "inner.count", "invalid", "greater than or equal to 1"),
        ({"name": "a", "ratio": 0}, "ratio", "invalid", "greater than 0"),
        ({"name": "a", "ratio": 2}, "ratio", "invalid", "less than or equal to 1"),
        ({"name": "a", "inner": {"count": "3"}}, "inner.count", "invalid", "Expected `int`, got `str`"),
        ({"name": "a", "colour": "green"}, "colour", "invalid", "allowed: red, blue"),
        ({"name": "a", "inner": {"formats": ["onnx", "pt"]}}, "inner.formats.1", "invalid", "allowed: onnx, tflite"),
        ({"name": "a", "items": [{}, {"count": -1}]}, "items.1.count", "invalid", "greater than or equal to 1"),
        ({"name": "a", "items": [{"formats": ["pt"]}]}, "items.0.formats.0", "invalid", "allowed: onnx, tflite"),
        ({"name": "a", "inner": {"url": "http://x"}}, "inner.url", "invalid", "must start with mqtt://"),
        ({"name": "both", "inner": {"count": 2}}, "", "invalid", "a rule across fields"),
        ([1, 2], "", "invalid", "Expected `object`"),
    ],
)
def test_bad_input_names_the_key_and_the_problem(data, key, kind, words):
    e = error(data)
    assert (e.key, e.kind) == (key, kind), str(e)
    assert words in e.message and words in str(e)
    assert str(e).startswith(f"{key or '(top level)'}: ")


def test_not_json_is_its_own_kind():
    for raw in (b"", b"{", b"\xff\xfe", b'{"name": "a",}'):
        with pytest.raises(SchemaError) as e:
            Outer.parse_json(raw)
        assert e.value.kind == "json" and "not valid JSON" in e.value.message


def test_round_trip_through_dict_and_json():
    o = Outer(name="abc", colour=Colour.BLUE, inner=Inner(count=3, path=Path("/tmp/x"), formats=["tflite"]), source="file.toml")
    d = o.to_dict()
    assert d["colour"] == "blue" and d["inner"]["path"] == "/tmp/x" and "source" not in d  # excluded, like provenance of the object
    assert json.loads(o.to_json()) == d
    back = Outer.parse(d)
    assert back.inner.path == Path("/tmp/x") and back.colour is Colour.BLUE and back.source == ""
    assert Outer.parse_json(o.to_json()) == back
    assert "ratio" not in o.to_dict(exclude={"ratio"})


def test_excluded_fields_are_not_read_from_the_data():
    for parse, data in ((Outer.parse, {"name": "a", "source": "x"}), (Outer.parse_json, b'{"name": "a", "source": "x"}')):
        with pytest.raises(SchemaError) as e:
            parse(data)
        assert (e.value.key, e.value.kind) == ("source", "unknown")


def test_numpy_scalars_encode_as_json_numbers():
    b = TelemetryBatch(device_id="d1", seq=np.int64(3), ts_start=0.0, ts_end=np.float32(1.5), inference_count=np.int64(7))
    assert json.loads(b.to_json())["inference_count"] == 7 and json.loads(b.to_json())["ts_end"] == 1.5
    assert TelemetryBatch.parse_json(b.to_json()).seq == 3


def test_replace_keeps_the_rest_and_construction_does_not_validate():
    o = Outer(name="abc")
    assert o.replace(ratio=0.9) == Outer(name="abc", ratio=0.9) and o.ratio == 0.5
    assert Outer(name="NOT VALID").name == "NOT VALID"  # construction is code's business; parse() is the gate
    with pytest.raises(SchemaError):
        Outer.parse(Outer(name="NOT VALID").to_dict())


def test_fields_are_keyword_only_in_every_subclass():
    with pytest.raises(TypeError):
        Inner(3)  # type: ignore[misc]
    assert Outer.field_names() == ("name", "colour", "inner", "items", "ratio", "source")


def test_nested_schema_and_allowed_values_follow_dotted_keys():
    assert nested_schema(Outer, "") is Outer and nested_schema(Outer, "inner") is Inner
    assert nested_schema(Outer, "items.1") is Inner  # a list item's section
    assert nested_schema(Outer, "name") is None and nested_schema(Outer, "nope") is None
    assert allowed_values(Outer, "colour") == ["red", "blue"]
    assert allowed_values(Outer, "inner.formats.0") == ["onnx", "tflite"]
    assert allowed_values(Outer, "ratio") == []


# -- tampered and malformed protocol messages: counted and dropped (None), never raised -------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_out_of_parse_message(raw):
    for model in (Command, DeviceEvent, TelemetryBatch, FetchRequest):
        parse_message(model, raw)


GOOD_COMMAND = {"device_id": "d1", "command_id": "c1", "seq": 1, "expires": 2e9, "kind": "assign", "target_name": "x/1/x.bundle", "target_sha256": "a" * 64, "target_length": 10}


@pytest.mark.parametrize(
    "change",
    [
        {"seq": 0},
        {"seq": True},
        {"seq": "1"},
        {"kind": "format_disk"},
        {"command_id": ""},
        {"command_id": "x" * 129},
        {"target_sha256": "A" * 64},
        {"target_sha256": "a" * 63},
        {"target_length": -1},
        {"runs": 0},
        {"runs": 10_001},
        {"extra_field": 1},
        {"expires": "tomorrow"},
        {"bundle": {"name": "x", "version": "1", "surprise": 1}},
    ],
)
def test_tampered_command_payloads_are_refused(change):
    assert parse_message(Command, json.dumps(GOOD_COMMAND).encode()) is not None
    assert parse_message(Command, json.dumps({**GOOD_COMMAND, **change}).encode()) is None


@pytest.mark.parametrize("path", ["../etc/passwd", "/metadata/root.json", "targets/" + "a" * 600, "other/root.json", "metadata/", ""])
def test_fetch_requests_for_paths_outside_the_repository_are_refused(path):
    # (`..` inside a path is refused by the repository server's own check, fleet/repo_server.py)
    assert parse_message(FetchRequest, json.dumps({"request_id": "r", "path": path}).encode()) is None
