"""Strict JSON for request bodies: one parser, one kind of error, for the API and both services.

`json.loads` accepts what no client of ours sends and fails on the rest with exceptions a web app
does not expect: NaN and Infinity, 1e999999 (read as infinity), duplicate keys (the last one
silently wins), and a body nested a thousand deep raises RecursionError, not ValueError. Here each
of these is a `MalformedJSON` with a one-line reason, which the apps answer with a 4xx.
"""
from __future__ import annotations

import json
import math
from typing import Any

class MalformedJSON(ValueError):
    """The body is not JSON we accept; the message says why, in one line."""


def _constant(name: str) -> Any:
    raise MalformedJSON(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise MalformedJSON(f"number {text[:20]}{'...' if len(text) > 20 else ''} is out of range")
    return value


def _int(text: str) -> int:
    if len(text) > 64:  # also spares int()'s quadratic conversion of a 100k-digit number
        raise MalformedJSON(f"number of {len(text)} digits is out of range")
    return int(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise MalformedJSON(f"duplicate key {dup[:40]!r}")
    return obj


def loads(body: bytes | str) -> Any:
    """The JSON value of `body` (UTF-8), or MalformedJSON."""
    if isinstance(body, (bytes, bytearray)):
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedJSON(f"body is not UTF-8 (byte {exc.start})") from None
    else:
        text = body
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int,
                          object_pairs_hook=_object)
    except MalformedJSON:
        raise
    except RecursionError:
        raise MalformedJSON("nested too deep") from None
    except ValueError as exc:
        raise MalformedJSON(str(exc).splitlines()[0]) from None
