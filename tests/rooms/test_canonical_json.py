"""Canonical JSON: the appendix's examples, an independent encoder as oracle,
and the strict parsing rules of room versions 6+."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pserver.rooms.canonical_json import (
    MAX_SAFE_INTEGER,
    MIN_SAFE_INTEGER,
    encode_canonical_json,
    parse_json,
)
from p2pserver.rooms.errors import BadJSON

SPEC = json.loads((Path(__file__).parent.parent / "fixtures/spec/canonical_json.json").read_text())

# -- the appendix's examples -----------------------------------------------------


@pytest.mark.parametrize("example", SPEC["examples"], ids=lambda e: e["canonical"][:30])
def test_spec_example(example: dict[str, Any]) -> None:
    value = parse_json(example["input"], strict=False)
    assert encode_canonical_json(value).decode("utf-8") == example["canonical"]
    if example["strict"]:
        assert encode_canonical_json(parse_json(example["input"])) == encode_canonical_json(value)
    else:
        with pytest.raises(BadJSON):
            parse_json(example["input"])


# -- an independent encoder, written from the appendix's grammar ----------------

_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _oracle_string(text: str) -> str:
    out = []
    for char in text:
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)  # everything else is written as itself, UTF-8
    return '"' + "".join(out) + '"'


def _oracle(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _oracle_string(value)
    if isinstance(value, list):
        return "[" + ",".join(_oracle(v) for v in value) + "]"
    # Keys sorted by code point: compare lists of code points explicitly.
    keys = sorted(value, key=lambda k: [ord(c) for c in k])
    return "{" + ",".join(_oracle_string(k) + ":" + _oracle(value[k]) for k in keys) + "}"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(MIN_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_encoding_matches_the_grammar(value: Any) -> None:
    assert encode_canonical_json(value) == _oracle(value).encode("utf-8")


@given(json_values)
def test_encoding_is_stable(value: Any) -> None:
    encoded = encode_canonical_json(value)
    assert encode_canonical_json(parse_json(encoded)) == encoded
    assert parse_json(encoded) == value


@given(st.dictionaries(st.text(max_size=4), st.integers(0, 9), min_size=2, max_size=8))
def test_object_keys_come_out_in_code_point_order(obj: dict[str, int]) -> None:
    seen: list[list[str]] = []
    json.loads(encode_canonical_json(obj), object_pairs_hook=lambda p: seen.append([k for k, _ in p]))
    assert seen == [sorted(obj)]


def test_code_point_order_is_not_utf16_order() -> None:
    # U+FF61 sorts before U+1F600 by code point, after it in UTF-16 units.
    assert encode_canonical_json({"\U0001f600": 1, "\uff61": 2}) == '{"｡":2,"😀":1}'.encode()


@given(json_values, st.integers(0, 3))
def test_insignificant_whitespace_is_dropped(value: Any, indent: int) -> None:
    pretty = json.dumps(value, indent=indent or None, ensure_ascii=True)
    assert encode_canonical_json(parse_json(pretty)) == encode_canonical_json(value)


# -- strict parsing (room versions 6+) ------------------------------------------

BAD_NUMBERS = ["1.0", "1e5", "-0.5", "1E+2", str(MAX_SAFE_INTEGER + 1), str(MIN_SAFE_INTEGER - 1)]
BAD_CONSTANTS = ["NaN", "Infinity", "-Infinity"]


@given(json_values, st.sampled_from(BAD_NUMBERS + BAD_CONSTANTS), st.booleans())
def test_strict_parsing_refuses_bad_numbers_anywhere(value: Any, bad: str, in_list: bool) -> None:
    inner = encode_canonical_json(value).decode()
    text = f"[{inner},{bad}]" if in_list else f'{{"ok":{inner},"x":{{"y":[{bad}]}}}}'
    with pytest.raises(BadJSON):
        parse_json(text)


@pytest.mark.parametrize("bad", BAD_CONSTANTS)
def test_loose_parsing_refuses_nan_and_infinity_too(bad: str) -> None:
    with pytest.raises(BadJSON):
        parse_json(f"[{bad}]", strict=False)


def test_strict_parsing_accepts_the_integer_range() -> None:
    assert parse_json(f"[{MAX_SAFE_INTEGER},{MIN_SAFE_INTEGER},-0]") == [
        MAX_SAFE_INTEGER,
        MIN_SAFE_INTEGER,
        0,
    ]


@given(json_values, json_values, st.text(max_size=5), st.booleans())
def test_strict_parsing_refuses_duplicate_keys(a: Any, b: Any, key: str, nested: bool) -> None:
    k = _oracle_string(key)
    obj = f"{{{k}:{_oracle(a)},{k}:{_oracle(b)}}}"
    text = f'{{"outer":[{obj}]}}' if nested else obj
    with pytest.raises(BadJSON, match="duplicate key"):
        parse_json(text)
    assert parse_json(text, strict=False) is not None  # the loose reader lets the last win


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e10", 10**10), ("2.0", 2), ("-0.0", 0), ("1.5", 1.5), ("-1E2", -100)],
)
def test_loose_parsing_reads_integral_numbers_as_integers(text: str, value: Any) -> None:
    parsed = parse_json(text, strict=False)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(
    "text", ["", "{", "[1,]", "{} {}", "'a'", '{"a" 1}', '"\\x"', b"\xff\xfe"]
)
def test_malformed_json_is_bad_json(text: str | bytes) -> None:
    with pytest.raises(BadJSON):
        parse_json(text)


def test_deep_nesting_is_bad_json_not_a_crash() -> None:
    with pytest.raises(BadJSON):
        parse_json("[" * 100_000 + "]" * 100_000)


# -- encoding refuses what canonical JSON cannot represent ----------------------


@pytest.mark.parametrize(
    "value",
    [1.5, float("nan"), float("inf"), MAX_SAFE_INTEGER + 1, MIN_SAFE_INTEGER - 1, {1: "a"},
     {"a": {"b": [2.0]}}, "\ud800", {"\udc00": 1}, object(), (1, {2})],
    ids=repr,
)
def test_encoding_refuses_non_canonical_values(value: Any) -> None:
    with pytest.raises(BadJSON):
        encode_canonical_json(value)
