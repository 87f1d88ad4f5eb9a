"""Typed schemas for what devices read and write: messages, manifests, profiles, config, state.

The shared schemas are msgspec Structs rather than pydantic models because the device agent
keeps them resident: pydantic, pydantic-core and the validators it builds for these models
cost the agent ~11 MiB RSS (measured import by import, docs/benchmarks.md), msgspec ~1 MiB.
The console's own settings and the packager's options stay pydantic: they never run on a device.

:class:`Schema` is the base of every shared schema. Unknown keys are refused, fields are
keyword-only, constraints are ``Annotated[T, Meta(...)]``, and cross-field rules go in
``__post_init__`` (raise ``ValueError``, or :class:`FieldError` to name one field). Validation
happens where data comes in
(:meth:`Schema.parse`, :meth:`Schema.parse_json`); constructing a Struct in code does not
validate, as with dataclasses. Errors are :class:`SchemaError`, which names the dotted key
(``broker.keepalive_s``, ``inputs.0.name``) so callers can say which file and key is wrong.
"""

from __future__ import annotations

import re
import typing
from enum import Enum
from pathlib import PurePath
from typing import Any, ClassVar, TypeVar

import msgspec
from msgspec import Meta, field

__all__ = ["FieldError", "Meta", "Schema", "SchemaError", "allowed_values", "field", "nested_schema", "schema_error"]

S = TypeVar("S", bound="Schema")

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]*)`$")


class SchemaError(ValueError):
    """Data that does not fit a schema.

    ``key`` is the dotted path of the offending key ('' for the top level), ``kind`` is
    ``unknown`` (a key the schema does not have), ``missing`` (a required key), ``json`` (not
    JSON at all) or ``invalid`` (a wrong type or value), ``message`` says what was expected.
    """

    def __init__(self, key: str, kind: str, message: str):
        self.key, self.kind, self.message = key, kind, message
        super().__init__(f"{key or '(top level)'}: {message}")


class FieldError(ValueError):
    """Raised by a schema's ``__post_init__`` for a rule about one field, so the error names
    that field's key rather than only its section."""

    def __init__(self, field_name: str, message: str):
        self.field_name = field_name
        super().__init__(message)


_BOUND_WORDS = {">=": "greater than or equal to", ">": "greater than", "<=": "less than or equal to", "<": "less than"}
_BOUND = re.compile(r"^Expected `(?P<type>[^`]+)`(?P<length> of length)? (?P<op>>=|>|<=|<) (?P<n>\S+)$")
_REGEX = re.compile(r"^Expected `str` matching regex (?P<re>.+)$")


def _in_words(msg: str) -> str:
    """msgspec's constraint messages in words people read ("should be greater than 0")."""
    m = _BOUND.match(msg)
    if m:
        bound = f"{_BOUND_WORDS[m.group('op')]} {m.group('n')}"
        return f"length should be {bound}" if m.group("length") else f"should be a `{m.group('type')}` {bound}"
    m = _REGEX.match(msg)
    if m:
        return f"should match the pattern {m.group('re')}"
    return msg


def _dotted(path: str) -> str:
    """``.inputs[0].name`` (msgspec's path) -> ``inputs.0.name``."""
    return re.sub(r"\[(\d+)\]", r".\1", path).strip(".")


def schema_error(e: msgspec.MsgspecError, schema: type | None = None) -> SchemaError:
    """A msgspec validation or decode error as a :class:`SchemaError` naming the key (and,
    for a value outside a fixed set, the values ``schema`` allows there)."""
    if not isinstance(e, msgspec.ValidationError):
        return SchemaError("", "json", f"not valid JSON ({e})")
    m = _AT.match(str(e))
    msg, path = (m.group("msg"), _dotted(m.group("path") or "")) if m else (str(e), "")
    cause = e.__cause__
    if isinstance(cause, FieldError):
        return SchemaError(".".join(p for p in (path, cause.field_name) if p), "invalid", str(cause))
    for pattern, kind, text in ((_UNKNOWN, "unknown", "unknown key"), (_MISSING, "missing", "required key is missing")):
        hit = pattern.match(msg)
        if hit:
            return SchemaError(".".join(p for p in (path, hit.group("name")) if p), kind, text)
    msg = _in_words(msg)
    if schema is not None and msg.startswith("Invalid enum value"):
        allowed = allowed_values(schema, path)
        if allowed:
            msg += "; allowed: " + ", ".join(map(str, allowed))
    return SchemaError(path, "invalid", msg)


def _decode_hook(type_: type, obj: Any) -> Any:
    # Types msgspec does not decode by itself; TOML and JSON give them as strings.
    if isinstance(type_, type) and issubclass(type_, PurePath) and isinstance(obj, str):
        return type_(obj)
    raise NotImplementedError(f"no decoder for {type_}")


def _encode_hook(obj: Any) -> Any:
    if isinstance(obj, PurePath):
        return str(obj)
    item = getattr(obj, "item", None)  # numpy scalars (np.int64 counts, np.float32 stats)
    if callable(item) and type(obj).__module__ == "numpy":
        return item()
    raise NotImplementedError(f"cannot encode {type(obj).__name__} as JSON")


_json_encoder = msgspec.json.Encoder(enc_hook=_encode_hook)


class _SchemaMeta(type(msgspec.Struct)):  # type: ignore[misc]
    # msgspec applies kw_only to the fields of the class that sets it; every schema wants it,
    # so fields with defaults can come before required ones in the order that reads best.
    def __new__(mcls, name, bases, namespace, **options):
        options.setdefault("kw_only", True)
        return super().__new__(mcls, name, bases, namespace, **options)


class Schema(msgspec.Struct, metaclass=_SchemaMeta, forbid_unknown_fields=True):
    """Base of the shared schemas (see the module docstring)."""

    # Fields that describe where an object came from rather than what it is (a profile's
    # source file): set by the loader, never read from the data, left out of to_dict.
    __schema_exclude__: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def parse(cls: type[S], data: Any) -> S:
        """Validate Python data (a dict from TOML or JSON) into this schema; raises SchemaError."""
        if cls.__schema_exclude__ and isinstance(data, dict):
            given = [k for k in cls.__schema_exclude__ if k in data]
            if given:
                raise SchemaError(given[0], "unknown", "unknown key")
        try:
            return msgspec.convert(data, cls, dec_hook=_decode_hook)
        except msgspec.MsgspecError as e:
            raise schema_error(e, cls) from e

    @classmethod
    def parse_json(cls: type[S], raw: bytes | str) -> S:
        """Decode and validate JSON into this schema; raises SchemaError."""
        try:
            if cls.__schema_exclude__:  # check the keys first, as parse() does
                return cls.parse(msgspec.json.decode(raw))
            return msgspec.json.decode(raw, type=cls, dec_hook=_decode_hook)
        except msgspec.MsgspecError as e:
            raise schema_error(e, cls) from e

    def to_dict(self, exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """Plain JSON-ready data: nested schemas as dicts, enums as values, paths as strings."""
        data = msgspec.to_builtins(self, enc_hook=_encode_hook)
        for name in (*self.__schema_exclude__, *exclude):
            data.pop(name, None)
        return data

    def to_json(self) -> str:
        """Compact JSON (field order as declared)."""
        if self.__schema_exclude__:
            return msgspec.json.encode(self.to_dict()).decode()
        return _json_encoder.encode(self).decode()

    def replace(self: S, **changes: Any) -> S:
        """A copy with some fields changed (not validated, like construction)."""
        return msgspec.structs.replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The keys this schema accepts."""
        return cls.__struct_fields__


def nested_schema(cls: type[Schema], dotted: str) -> type[Schema] | None:
    """The schema of the section at a dotted key (``device`` of HardwareProfile, ``inputs.0``
    of Manifest), or None when the key names no section."""
    current: Any = cls
    for part in filter(None, dotted.split(".")):
        if part.isdigit():  # an item of the list (or dict) the previous part unwrapped
            continue
        if not (isinstance(current, type) and issubclass(current, Schema)):
            return None
        current = typing.get_type_hints(current).get(part)
        # unwrap Optional[...] and similar: the first Schema among the arguments
        candidates = [a for a in typing.get_args(current) if isinstance(a, type) and issubclass(a, Schema)]
        if candidates:
            current = candidates[0]
    return current if isinstance(current, type) and issubclass(current, Schema) else None


def allowed_values(cls: type[Schema], dotted: str) -> list:
    """The values a Literal or Enum field at a dotted key allows ([] for other fields)."""
    parts = dotted.split(".")
    while parts and parts[-1].isdigit():  # an item of a list field: the field's own values
        parts.pop()
    if not parts:
        return []
    owner = nested_schema(cls, ".".join(parts[:-1]))
    name = parts[-1]
    if owner is None:
        return []
    type_ = typing.get_type_hints(owner).get(name)
    pending = [type_]
    while pending:  # walk Optional[...], list[...], Literal[...] down to the allowed values
        t = pending.pop(0)
        if typing.get_origin(t) is typing.Literal:
            return list(typing.get_args(t))
        if isinstance(t, type) and issubclass(t, Enum):
            return [m.value for m in t]
        pending.extend(typing.get_args(t))
    return []
