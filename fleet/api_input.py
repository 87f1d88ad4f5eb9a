"""What the REST API reads from a request: bounded query parameters and limited JSON bodies.

Every query parameter is declared once as a :class:`Param`; the same object reads and checks the
value and writes its OpenAPI description, so the document and the server cannot disagree on a
range. A JSON body is refused before it is parsed when it is larger than ``MAX_BODY_BYTES``
(413) or nested deeper than ``MAX_JSON_DEPTH`` (400), and when parsed it may hold no NaN,
Infinity, out-of-range float or NUL character (the database cannot store them and no setting
needs them). Each refusal is a :class:`RequestError` whose message names the parameter or the
body and the accepted range.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from edgeops.errors import FleetError
from edgeops.protocol import DEVICE_ID_PATTERN, DEVICE_ID_RULE

MAX_BODY_BYTES = 64 * 1024  # the largest body the API takes (a rollout request is well under 2 KiB)
MAX_JSON_DEPTH = 16  # objects/arrays inside each other; a rollout request needs 3
MAX_PAGE = 10_000  # rows one list call may ask for
MAX_OFFSET = 2**31 - 1  # fits every database's OFFSET
MAX_TEXT = 200  # characters of a free-text query parameter or path id
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"  # printable: no NUL (PostgreSQL refuses it) or other control characters
_TEXT_RE = re.compile(TEXT_PATTERN)
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
_INT_RE = re.compile(r"^[+-]?[0-9]{1,30}$")
_FLOAT_RE = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


class RequestError(FleetError):
    """A request the API refuses before doing anything: 400 (bad value) or 413 (body too large)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


@dataclass(frozen=True)
class Param:
    """One query parameter: its kind, range and default.

    ``kind`` is ``int`` (``minimum``..``maximum``), ``number`` (finite), ``bool``
    (true/false/1/0/yes/no/on/off), ``enum`` (one of ``values``), ``device`` (a device id) or
    ``text`` (printable, at most ``MAX_TEXT`` characters).
    """

    name: str
    kind: str
    description: str = ""
    minimum: int | None = None
    maximum: int | None = None
    default: int | None = None
    values: tuple[str, ...] = field(default_factory=tuple)

    def read(self, query) -> object:
        """The parameter's value from a query mapping (its default when absent); RequestError otherwise."""
        raw = query.get(self.name)
        if raw is None:
            return self.default
        return getattr(self, f"_{self.kind}")(raw)

    def _fail(self, raw: str, expected: str):
        raise RequestError(f"query parameter {self.name}: {_shown(raw)} is not {expected}")

    def _int(self, raw: str) -> int:
        expected = f"an integer from {self.minimum} to {self.maximum}"
        if not _INT_RE.fullmatch(raw):
            self._fail(raw, expected)
        value = int(raw)
        if not self.minimum <= value <= self.maximum:
            self._fail(raw, expected)
        return value

    def _number(self, raw: str) -> float:
        value = float(raw) if _FLOAT_RE.fullmatch(raw) else math.nan
        if not math.isfinite(value):
            self._fail(raw, "a finite number (unix time in seconds)")
        return value

    def _bool(self, raw: str) -> bool:
        low = raw.lower()
        if low not in _TRUE | _FALSE:
            self._fail(raw, "a boolean (true or false)")
        return low in _TRUE

    def _enum(self, raw: str) -> str:
        if raw not in self.values:
            self._fail(raw, f"one of {', '.join(self.values)}")
        return raw

    def _device(self, raw: str) -> str:
        if not _DEVICE_ID_RE.fullmatch(raw):
            self._fail(raw, f"a device id ({DEVICE_ID_RULE})")
        return raw

    def _text(self, raw: str) -> str:
        if len(raw) > MAX_TEXT or not _TEXT_RE.fullmatch(raw):
            self._fail(raw, f"printable text of at most {MAX_TEXT} characters")
        return raw

    def openapi(self) -> dict:
        """The OpenAPI 3.1 parameter object."""
        schema: dict
        if self.kind == "int":
            schema = {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}
            if self.default is not None:
                schema["default"] = self.default
        elif self.kind == "number":
            schema = {"type": "number"}
        elif self.kind == "bool":
            schema = {"type": "boolean"}
        elif self.kind == "enum":
            schema = {"type": "string", "enum": list(self.values)}
        elif self.kind == "device":
            schema = {"type": "string", "pattern": DEVICE_ID_PATTERN}
        else:
            schema = {"type": "string", "maxLength": MAX_TEXT, "pattern": TEXT_PATTERN}
        out = {"name": self.name, "in": "query", "required": False, "schema": schema}
        if self.description:
            out["description"] = self.description
        return out


def limit_param(default: int | None) -> Param:
    """``limit``: rows to return, 1..MAX_PAGE."""
    return Param("limit", "int", "rows to return at most", minimum=1, maximum=MAX_PAGE, default=default)


OFFSET = Param("offset", "int", "rows to skip (with limit)", minimum=0, maximum=MAX_OFFSET, default=0)


def valid_device_id(text: str) -> bool:
    """True when ``text`` can be a device id (a path id that cannot is an unknown device)."""
    return bool(_DEVICE_ID_RE.fullmatch(text))


def valid_text(text: str) -> bool:
    """True when ``text`` is printable and at most MAX_TEXT characters (other path ids name nothing)."""
    return len(text) <= MAX_TEXT and bool(_TEXT_RE.fullmatch(text))


def json_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when the JSON text nests objects/arrays deeper than ``limit`` (checked without parsing it)."""
    depth = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub(b'""', raw)):  # brackets inside strings do not nest
        if m.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of the range of a number")
    return value


def _check_strings(value, where: str = "body") -> None:
    stack = [(value, where)]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                raise RequestError(f"{at}: text may not contain NUL (\\u0000) characters")
        elif isinstance(v, dict):
            for k, x in v.items():
                if "\x00" in k:
                    raise RequestError(f"{at}: field names may not contain NUL (\\u0000) characters")
                stack.append((x, f"{at}.{k}" if at != "body" else k))
        elif isinstance(v, list):
            stack.extend((x, f"{at}.{i}") for i, x in enumerate(v))


def parse_json_body(raw: bytes, example: str) -> dict:
    """The JSON object of a request body; RequestError (naming ``example``, the expected shape) otherwise."""
    if len(raw) > MAX_BODY_BYTES:
        raise RequestError(f"body: {len(raw)} bytes; the API takes at most {MAX_BODY_BYTES}", status=413)
    if json_too_deep(raw):
        raise RequestError(f"body: JSON nested deeper than {MAX_JSON_DEPTH} levels; send {example}")
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
        raise RequestError(f"body is not JSON ({reason[:120]}); send {example}") from None
    if not isinstance(body, dict):
        raise RequestError(f"body must be a JSON object: {example}")
    _check_strings(body)
    return body
