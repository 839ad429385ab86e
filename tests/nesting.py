"""Deeply nested JSON values for the bad-input tests."""

from __future__ import annotations

from typing import Any


def nested(depth: int) -> Any:
    """``depth`` containers, objects and arrays in turn, around the string "x"."""
    value: Any = "x"
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value
