"""JSON for the forwarding hot paths: orjson where it keeps every value exact, else the standard library.

`tools/call` parses the client's request and the upstream's answer and writes both on; with the
standard library that is a chain of Python calls each way, with orjson one C call. orjson reads an
integer beyond 64 bits as a float and refuses `NaN` or a lone surrogate, so such documents (rare,
and found by a cheap scan or by orjson's own error) take the standard library's path instead:
what the gateway hands on is always the value it was given.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_NUMBER = re.compile(rb"\d{19}")  # 2**63 has 19 digits: anything this long may not fit


def loads(data: bytes) -> Any:
    """The value of a JSON document; ValueError (or RecursionError) when it is not one."""
    if _LONG_NUMBER.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # not orjson's kind of JSON (NaN, a lone surrogate): let the standard library judge
    return json.loads(data)


def dumps(value: Any) -> bytes:
    """Compact JSON for `value` (UTF-8)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits, a non-string key
        return json.dumps(value, separators=(",", ":")).encode()
