"""A minimal ONNX protobuf writer and reader, so the `onnx` package is not a runtime dependency.

The writer makes the few messages that resnet.py's graph needs (field numbers from
onnx/onnx.proto); the reader splits a message into its fields, which is enough for mtcnn.py to
rewrite a few nodes of a model and keep every other byte as it was.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def f_int(field: int, v: int) -> bytes:
    return varint(field << 3) + varint(v)


def f_bytes(field: int, b: bytes | str) -> bytes:
    if isinstance(b, str):
        b = b.encode()
    return varint(field << 3 | 2) + varint(len(b)) + b


def attr(name: str, v) -> bytes:
    if isinstance(v, int):
        return f_bytes(1, name) + f_int(3, v) + f_int(20, 2)                  # INT
    return f_bytes(1, name) + b"".join(f_int(8, x) for x in v) + f_int(20, 7)  # INTS


def node(op: str, inputs: list[str], outputs: list[str], **attrs) -> bytes:
    return (b"".join(f_bytes(1, s) for s in inputs) + b"".join(f_bytes(2, s) for s in outputs)
            + f_bytes(3, outputs[0]) + f_bytes(4, op)
            + b"".join(f_bytes(5, attr(k, v)) for k, v in attrs.items()))


FLOAT, UINT8, INT64 = 1, 2, 7


def tensor(name: str, arr: np.ndarray) -> list:
    """A TensorProto as chunks: its header, then the raw little-endian data (not copied here)."""
    dtype = {np.dtype(np.float32): FLOAT, np.dtype(np.int64): INT64}[arr.dtype]
    raw = memoryview(np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))).cast("B")
    header = (b"".join(f_int(1, d) for d in arr.shape) + f_int(2, dtype) + f_bytes(8, name)
              + varint(9 << 3 | 2) + varint(raw.nbytes))
    return [header, raw]


def f_chunks(field: int, chunks: list) -> list:
    """A length-delimited field whose payload is a list of chunks, joined only once at the end."""
    return [varint(field << 3 | 2) + varint(sum(memoryview(c).nbytes for c in chunks)), *chunks]


def value_info(name: str, elem: int, dims: list) -> bytes:
    dim = b"".join(f_bytes(1, f_bytes(2, d) if isinstance(d, str) else f_int(1, d)) for d in dims)
    tensor_type = f_int(1, elem) + f_bytes(2, dim)
    return f_bytes(1, name) + f_bytes(2, f_bytes(1, tensor_type))


def fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview, memoryview]]:
    """(field number, wire type, value, the field's raw bytes) for each field of a message: the
    value is an int for varints and a memoryview of the payload for length-delimited fields."""
    mv = memoryview(buf)
    i = 0
    while i < len(mv):
        start = i
        key, i = _read_varint(mv, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(mv, i)
        elif wire == 2:
            n, i = _read_varint(mv, i)
            value, i = mv[i:i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = int.from_bytes(mv[i:i + n], "little"), i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value, mv[start:i]


def _read_varint(mv: memoryview, i: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        b = mv[i]
        i += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            return v, i
        shift += 7


def strings(buf: bytes | memoryview, number: int) -> list[str]:
    """The values of a repeated string field."""
    return [bytes(v).decode() for n, w, v, _ in fields(buf) if n == number and w == 2]


def tensor_array(buf: bytes | memoryview) -> tuple[str, np.ndarray]:
    """(name, float32 array) of a TensorProto holding float32 data (raw or packed)."""
    dims, name, data = [], "", None
    for n, w, v, _ in fields(buf):
        if n == 1:  # dims: varints, or packed
            dims += [v] if w == 0 else [x for *_, x in _packed_varints(v)]
        elif n == 2 and v != FLOAT:
            raise ValueError(f"tensor data type {v}, expected float32")
        elif n == 8:
            name = bytes(v).decode()
        elif n in (4, 9):  # float_data (packed), raw_data
            data = np.frombuffer(bytes(v), dtype="<f4")
    if data is None:
        raise ValueError(f"tensor {name!r} has no float data")
    return name, data.astype(np.float32).reshape(dims)


def _packed_varints(mv: memoryview) -> Iterator[tuple[int, int]]:
    i = 0
    while i < len(mv):
        v, i = _read_varint(mv, i)
        yield i, v
