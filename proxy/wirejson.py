"""JSON for the wire: orjson where it keeps every value exact, else the standard library.

`tools/call` parses the client's request and the upstream's answer and writes both on; with the
standard library that is a chain of Python calls each way, with orjson one C call. orjson reads an
integer beyond 64 bits as a float and refuses `NaN` or a lone surrogate, so such documents (rare,
and found by a cheap scan or by orjson's own error) take the standard library's path instead:
what the gateway hands on is always the value it was given.

What clients send us is held to RFC 8259 (`loads_strict`): no `NaN`/`Infinity`, no lone surrogate
escape, UTF-8 only. Such a value is refused at the edge, because once stored it would break every
answer that contains it. What we write (`dumps`) is always valid JSON in valid UTF-8.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

import orjson

_LONG_NUMBER = re.compile(rb"\d{19}")  # 2**63 has 19 digits: anything this long may not fit
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")  # \uD800-\uDFFF: maybe half of a pair


def loads(data: bytes) -> Any:
    """The value of a JSON document; ValueError (or RecursionError) when it is not one.

    Lenient as upstream servers may be (`NaN`, lone surrogates): for relaying their answers.
    """
    if _LONG_NUMBER.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # not orjson's kind of JSON (NaN, a lone surrogate): let the standard library judge
    return json.loads(data)


def loads_strict(data: bytes) -> Any:
    """The value of a strict JSON document (RFC 8259, UTF-8); ValueError for anything else.

    Refuses `NaN`, `Infinity`, `-Infinity`, numbers beyond a double (`1e400`) and lone surrogate
    escapes (`"\\ud800"`), which the standard library accepts and which no strict reader (orjson, a
    browser's, PostgreSQL's) takes back.
    """
    if _LONG_NUMBER.search(data) is None:
        return orjson.loads(data)  # strict already; its JSONDecodeError is a ValueError
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    if _SURROGATE_ESCAPE.search(data) is not None and _has_lone_surrogate(value):
        raise ValueError("JSON string with a lone surrogate escape")
    return value


def dumps(value: Any) -> bytes:
    """Compact JSON for `value`, always valid JSON in valid UTF-8.

    `NaN` and infinities become `null` (as orjson and JavaScript write them); a lone surrogate is
    written as its `\\u` escape rather than as bytes no UTF-8 reader accepts.
    """
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits, a non-string key, a lone surrogate
        pass
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:  # NaN or an infinity beside a long integer: rare enough to copy
        return json.dumps(_finite(value), separators=(",", ":"), allow_nan=False).encode()


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: orjson refuses it too
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    # The decoder joins escaped pairs into one code point, so any surrogate left is a lone one.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
