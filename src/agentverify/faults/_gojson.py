"""JSON in and out the way Toxiproxy's Go server reads and writes it.

Toxiproxy decodes request bodies with Go's ``encoding/json`` into structs, so clients
rely on its rules: only the first JSON value of a body is read, object keys match struct
fields exactly or case-insensitively, ``null`` leaves a field as it was, unknown keys are
ignored, and a value of the wrong type is an error (``1.5`` is not an ``int64``). Its
output is compact, with ``<``, ``>`` and ``&`` escaped and ``float32`` values written in
their shortest form (``1``, not ``1.0``). This module reproduces those rules so that the
built-in server answers byte for byte where it matters.

Example:
    >>> decode_struct({"Name": "x", "enabled": None}, {"name": "string", "enabled": "bool"}, "Proxy")
    {'name': 'x'}
    >>> dumps({"a": "<b>", "toxicity": Float32(1.0)})
    '{"a":"\\\\u003cb\\\\u003e","toxicity":1}'
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any

__all__ = ["GoJSONError", "Float32", "loads", "decode_struct", "dumps", "to_float32"]

_INT64 = (-(2**63), 2**63 - 1)
_WHITESPACE = " \t\r\n"


class GoJSONError(ValueError):
    """A body Go's decoder would reject; the message is the one Go would give."""


class Float32(float):
    """A float that is written like Go writes a ``float32`` (``1``, ``0.2``, ``1e-07``)."""


def to_float32(value: float) -> float:
    """Round to the nearest ``float32``, as storing into a Go ``float32`` field does."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def _reject_constant(name: str) -> Any:
    raise GoJSONError(f"invalid character '{name[0]}' looking for beginning of value")


def _syntax_message(exc: json.JSONDecodeError, text: str) -> str:
    if exc.pos >= len(text.rstrip(_WHITESPACE)):
        return "unexpected EOF"
    char = text[exc.pos]
    where = {
        "Expecting value": "looking for beginning of value",
        "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
        "Expecting ':' delimiter": "after object key",
        "Expecting ',' delimiter": "after object key:value pair",
        "Extra data": "after top-level value",
    }.get(exc.msg, "in string literal" if "control character" in exc.msg else "looking for beginning of value")
    shown = "'\\''" if char == "'" else "'" + json.dumps(char)[1:-1] + "'"
    return f"invalid character {shown} {where}"


def loads(raw: bytes) -> Any:
    """Decode the first JSON value of a body, as ``json.NewDecoder(r).Decode`` does.

    An empty body is ``EOF``; whatever follows the first value is not read.

    Raises:
        GoJSONError: with Go's message (``EOF``, ``unexpected EOF``, ``invalid character ...``).
    """
    text = raw.decode("utf-8", errors="replace")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    if start == len(text):
        raise GoJSONError("EOF")
    try:
        value, _ = json.JSONDecoder(parse_constant=_reject_constant).raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise GoJSONError(_syntax_message(exc, text)) from None
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _convert(value: Any, kind: str, where: str) -> Any:
    """One field value into a Go type: ``string``, ``bool``, ``int64``, ``int``, ``float32``, ``object``."""
    def mismatch(shown: str) -> GoJSONError:
        go_type = {"object": "map[string]interface {}"}.get(kind, kind)
        return GoJSONError(f"json: cannot unmarshal {shown} into Go struct field {where} of type {go_type}")

    if kind == "string":
        if isinstance(value, str):
            return value
    elif kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind in ("int64", "int"):
        if isinstance(value, int) and not isinstance(value, bool):
            if _INT64[0] <= value <= _INT64[1]:
                return value
            raise mismatch(f"number {value}")
        if isinstance(value, float):
            raise mismatch(f"number {json.dumps(value)}")
    elif kind == "float32":
        if isinstance(value, int | float) and not isinstance(value, bool):
            stored = to_float32(float(value))
            if math.isinf(stored):
                raise mismatch(f"number {value}")
            return stored
    elif kind == "object":
        if isinstance(value, dict):
            return value
    raise mismatch(_json_kind(value))


def decode_struct(obj: Any, fields: dict[str, str], struct_name: str) -> dict[str, Any]:
    """Decode a JSON object into the named fields of a Go struct.

    Args:
        obj: the decoded JSON value (must be an object).
        fields: JSON field name -> Go kind (see :func:`_convert`), in declaration order.
        struct_name: the Go type name used in error messages (``Proxy``, ``LatencyToxic``).

    Returns:
        The fields that were set (``null`` and absent fields are left out).

    Raises:
        GoJSONError: the value is not an object, or a field has the wrong type.
    """
    if not isinstance(obj, dict):
        raise GoJSONError(f"json: cannot unmarshal {_json_kind(obj)} into Go value of type {struct_name}")
    folded = {name.lower(): name for name in fields}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = key if key in fields else folded.get(key.lower())
        if name is None or value is None:
            continue
        out[name] = _convert(value, fields[name], f"{struct_name}.{name}")
    return out


def _float32_text(value: float) -> str:
    if value == int(value) and abs(value) < 1e21:
        return str(int(value))
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        if to_float32(float(text)) == value:
            break
    number = float(text)
    if 1e-6 <= abs(number) < 1e21:
        return repr(number) if "e" not in text else f"{number:f}".rstrip("0").rstrip(".")
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent):+03d}"


_MARK = "\x00f32:"


def _mark_floats(o: Any) -> Any:
    # The stdlib encoder cannot be told how to write one float, so a Float32 travels as a
    # marked string and is swapped for its Go rendering afterwards.
    if isinstance(o, Float32):
        return _MARK + _float32_text(float(o))
    if isinstance(o, dict):
        return {k: _mark_floats(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_mark_floats(v) for v in o]
    return o


_MARKED = re.compile(r'"\\u0000f32:([^"]*)"')


def dumps(value: Any) -> str:
    """Compact JSON as Go's ``json.Marshal`` writes it (HTML characters escaped, UTF-8 kept)."""
    text = json.dumps(_mark_floats(value), separators=(",", ":"), ensure_ascii=False)
    text = _MARKED.sub(lambda m: m.group(1), text)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
