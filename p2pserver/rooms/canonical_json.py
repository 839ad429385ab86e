"""Canonical JSON, as defined in the Matrix specification's appendix.

Rules:
- Encoding: UTF-8, object keys sorted by codepoint, no insignificant
  whitespace, no escaping beyond what JSON requires (control characters,
  ``"`` and ``\\``). Short escapes for \\b \\f \\n \\r \\t, otherwise ``\\u00xx``
  in lowercase hex. Python's ``json`` encoder does exactly this when told
  ``ensure_ascii=False``; we only add the number checks.
- Strict parsing (room versions 6 and later, so every version we support):
  integers only, within ±(2**53 - 1); no floats, NaN or Infinity; no
  duplicate object keys. Violations raise :class:`BadJSON` (M_BAD_JSON).

``encode_canonical_json`` never accepts floats: canonical JSON has no
representation for them. ``parse_json(..., strict=False)`` exists for tools
that must read arbitrary JSON (``p2pserver pdu canonical`` without --strict):
it reads integral numbers written with a fraction or exponent (``1e10``,
``2.0``) as integers, keeps other floats, and lets the last duplicate key
win.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

from p2pserver.rooms.errors import BadJSON

MAX_SAFE_INTEGER = 2**53 - 1
MIN_SAFE_INTEGER = -(2**53 - 1)
# Loose parsing turns integral floats into ints up to this many digits.
_MAX_INT_DIGITS = 400

_encoder = json.JSONEncoder(
    ensure_ascii=False,
    allow_nan=False,
    separators=(",", ":"),
    sort_keys=True,
)


_LEAF_TYPES = frozenset({str, bool, type(None)})


def _check_value(value: Any) -> None:
    """Reject values canonical JSON cannot represent (walks the tree once).

    Exact built-in types take the fast path (``type(x) is ...``, this runs
    several times per received PDU); subclasses and the rest go through
    :func:`_check_other`.
    """
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind in _LEAF_TYPES:
            continue
        if kind is int:
            if not MIN_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise BadJSON(f"integer out of range for canonical JSON: {item}")
        elif kind is dict:
            for key in item:
                if type(key) is not str:
                    _check_key(key)
            extend(item.values())
        elif kind is list:
            extend(item)
        else:
            _check_other(item, stack)


def _check_key(key: Any) -> None:
    if not isinstance(key, str):
        raise BadJSON(f"object keys must be strings, not {type(key).__name__}")


def _check_other(item: Any, stack: list[Any]) -> None:
    if isinstance(item, (str, bool)):
        return
    if isinstance(item, int):
        if not MIN_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
            raise BadJSON(f"integer out of range for canonical JSON: {item}")
    elif isinstance(item, float):
        raise BadJSON(f"floats are not allowed in canonical JSON: {item!r}")
    elif isinstance(item, dict):
        for key in item:
            _check_key(key)
        stack.extend(item.values())
    elif isinstance(item, (list, tuple)):
        stack.extend(item)
    else:
        raise BadJSON(f"not a JSON value: {type(item).__name__}")


def encode_canonical_json(value: Any) -> bytes:
    """Return the canonical JSON encoding of ``value`` as UTF-8 bytes."""
    _check_value(value)
    try:
        return _encoder.encode(value).encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates cannot be UTF-8
        raise BadJSON(f"string is not valid Unicode: {exc.reason}") from None


def encode_json_loose(value: Any) -> bytes:
    """Canonical layout (sorted keys, compact, UTF-8) without number checks.

    Only for tools that display arbitrary JSON; never for hashing or signing.
    """
    try:
        return json.dumps(
            value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
        ).encode("utf-8")
    except (ValueError, TypeError) as exc:
        raise BadJSON(str(exc)) from None
    except UnicodeEncodeError as exc:
        raise BadJSON(f"string is not valid Unicode: {exc.reason}") from None


def _reject_constant(name: str) -> Any:
    raise BadJSON(f"{name} is not valid JSON")


def _reject_float(text: str) -> Any:
    raise BadJSON(f"floats are not allowed: {text}")


def _strict_int(text: str) -> int:
    value = int(text)
    if not MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise BadJSON(f"integer out of range: {text}")
    return value


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadJSON(f"duplicate key in object: {key!r}")
            seen.add(key)
    return obj


def _loose_float(text: str) -> Any:
    """A number with a fraction or exponent, read loosely.

    One that is exactly an integer becomes an ``int``: canonical JSON writes
    integers without exponent or decimal places (the appendix's example maps
    ``1e10`` to ``10000000000``). Decimal keeps the test exact; the magnitude
    check stops ``1e999999999`` from turning into a huge int.
    """
    number = Decimal(text)
    if number.adjusted() <= _MAX_INT_DIGITS and number == number.to_integral_value():
        return int(number)
    value = float(text)
    if math.isinf(value):
        raise BadJSON(f"number out of range: {text}")
    return value


_strict_decoder = json.JSONDecoder(
    parse_float=_reject_float,
    parse_int=_strict_int,
    parse_constant=_reject_constant,
    object_pairs_hook=_unique_object,
)
_loose_decoder = json.JSONDecoder(
    parse_float=_loose_float,
    parse_constant=_reject_constant,
)


def parse_json(data: str | bytes, *, strict: bool = True) -> Any:
    """Parse JSON text. ``strict`` applies the canonical-JSON number and key rules."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadJSON(f"JSON is not valid UTF-8: {exc.reason}") from None
    else:
        text = data
    decoder = _strict_decoder if strict else _loose_decoder
    try:
        value, end = decoder.raw_decode(text, _skip_ws(text, 0))
    except json.JSONDecodeError as exc:
        raise BadJSON(f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise BadJSON("JSON is nested too deeply") from None
    if _skip_ws(text, end) != len(text):
        raise BadJSON("invalid JSON: extra data after the value")
    return value


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\n\r":
        pos += 1
    return pos
