"""Request bodies for the API and both services: read with a size limit and a deadline
(`read_body`), parsed as strict JSON (`loads`); one kind of error for each.

`json.loads` accepts what no client of ours sends and fails on the rest with exceptions a web app
does not expect: NaN and Infinity, 1e999999 (read as infinity), duplicate keys (the last one
silently wins), and a body nested a thousand deep raises RecursionError, not ValueError (up to
Python 3.12; 3.13 parses it). Here each of these is a `MalformedJSON` with a one-line reason,
which the apps answer with a 4xx, whatever the Python: nesting is also limited to MAX_DEPTH.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from . import aio


class BodyError(ValueError):
    """The body was not read whole: `status` 400 (a Content-Length that is not a number), 408 (it
    did not arrive in time) or 413 (over the size limit); the message says which, in one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _size(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n >= 1024 * 1024 else f"{n} bytes"


async def read_body(request: Any, max_bytes: int, timeout_s: float = 0.0,
                    on_chunk: Callable[[int], None] | None = None) -> bytes:
    """The whole body of a Starlette `request`, or BodyError: 413 as soon as its Content-Length or
    the bytes received pass `max_bytes`, 408 when it has not all arrived within `timeout_s` (0: no
    limit; a client trickling its upload would otherwise hold the connection and its buffer for
    as long as it likes). `on_chunk(n)` is called before each chunk is kept and may raise to refuse
    it (the API bounds what all arriving bodies buffer at once). A client that disconnects raises
    Starlette's ClientDisconnect, as `request.stream()` does."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BodyError(400, "Content-Length is not a number") from None
        if size > max_bytes:
            raise BodyError(413, f"body is {_size(size)}, over the {_size(max_bytes)} limit")
    body = bytearray()
    try:
        async with aio.timeout(timeout_s or None):
            async for chunk in request.stream():
                if on_chunk is not None:
                    on_chunk(len(chunk))
                body += chunk
                if len(body) > max_bytes:
                    raise BodyError(413, f"body is over the {_size(max_bytes)} limit")
    except TimeoutError:
        raise BodyError(408, f"the body did not arrive within {timeout_s:g} s") from None
    return bytes(body)


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


MAX_DEPTH = 64  # our bodies are an object holding strings, numbers and a few small arrays


def _too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


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
        value = json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int,
                           object_pairs_hook=_object)
    except MalformedJSON:
        raise
    except RecursionError:
        raise MalformedJSON("nested too deep") from None
    except ValueError as exc:
        raise MalformedJSON(str(exc).splitlines()[0]) from None
    if isinstance(value, (dict, list)) and _too_deep(value):
        raise MalformedJSON("nested too deep")
    return value
