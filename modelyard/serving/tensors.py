"""V2 tensor datatypes and their NumPy dtypes: the one table every path reads.

V2's raw tensor contents (gRPC's ``raw_input_contents``, the binary data of REST) are
little-endian and row-major; BYTES elements are length-prefixed strings and have no
fixed-size dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from mlserver.errors import InferenceError
from mlserver.types import TensorData

# Fixed-size datatypes, as their bytes are laid out on the wire.
RAW_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code).newbyteorder("<")
    for name, code in (
        ("BOOL", "bool"), ("UINT8", "uint8"), ("UINT16", "uint16"), ("UINT32", "uint32"),
        ("UINT64", "uint64"), ("INT8", "int8"), ("INT16", "int16"), ("INT32", "int32"),
        ("INT64", "int64"), ("FP16", "float16"), ("FP32", "float32"), ("FP64", "float64"),
    )
}  # fmt: skip

# Every datatype's NumPy type, BYTES as Python objects (str or bytes).
NUMPY_DTYPES: dict[str, Any] = {name: dtype.type for name, dtype in RAW_DTYPES.items()}
NUMPY_DTYPES["BYTES"] = object

DATATYPES = (*RAW_DTYPES, "BYTES")

_BY_DTYPE: dict[np.dtype, str] = {np.dtype(t): name for name, t in NUMPY_DTYPES.items()}


@functools.cache
def datatype_of(dtype: np.dtype) -> str | None:
    """The V2 datatype of a NumPy dtype (either byte order); BYTES for strings and
    objects; None for what V2 cannot carry (complex numbers, dates)."""
    if dtype.kind in "OUS":
        return "BYTES"
    return _BY_DTYPE.get(dtype.newbyteorder("="))


def _bad(name: str, message: str) -> InferenceError:
    return InferenceError(f"input '{name}': {message}")


def unpack_bytes(name: str, content: bytes | memoryview) -> list[bytes]:
    """BYTES elements from V2's raw form: each a 4-byte little-endian length, then
    that many bytes."""
    view = memoryview(content)
    elements, at = [], 0
    while at < len(view):
        if at + 4 > len(view):
            raise _bad(name, f"raw BYTES contents end inside a length prefix at byte {at}")
        size = int.from_bytes(view[at : at + 4], "little")
        at += 4
        if at + size > len(view):
            raise _bad(
                name,
                f"a raw BYTES element of {size} bytes at byte {at} runs past the end of "
                f"the {len(view)} bytes sent",
            )
        elements.append(bytes(view[at : at + size]))
        at += size
    return elements


def pack_bytes(elements: Iterable[Any]) -> bytes:
    """BYTES elements (bytes, or text as UTF-8) in V2's raw form."""
    out = bytearray()
    for element in elements:
        data = element if isinstance(element, bytes) else str(element).encode()
        out += len(data).to_bytes(4, "little") + data
    return bytes(out)


def raw_tensor(name: str, datatype: str, shape: Sequence[int], content: bytes) -> TensorData:
    """A tensor's data from its raw bytes: a NumPy array over them for fixed-size
    datatypes, the elements for BYTES; a 400 that names the input when they do not fit."""
    dtype = RAW_DTYPES.get(datatype)
    if dtype is None:
        if datatype != "BYTES":
            raise _bad(
                name, f"unknown datatype {datatype!r}; V2 datatypes are {', '.join(DATATYPES)}"
            )
        elements = unpack_bytes(name, content)
        expected = math.prod(shape)
        if len(elements) != expected:
            raise _bad(
                name, f"carries {len(elements)} BYTES elements, but its shape {list(shape)} "
                f"needs {expected}",
            )  # fmt: skip
        return TensorData(elements)
    expected = math.prod(shape) * dtype.itemsize
    if len(content) != expected:
        raise _bad(
            name, f"{len(content)} raw bytes do not fit its shape {list(shape)} of {datatype} "
            f"({expected} bytes: {dtype.itemsize} each)",
        )  # fmt: skip
    return TensorData.model_construct(root=np.frombuffer(content, dtype))


def raw_bytes(datatype: str, data: Any) -> bytes:
    """An output's data in V2's raw form."""
    values = getattr(data, "root", data)
    if datatype == "BYTES":
        flat = values.ravel() if isinstance(values, np.ndarray) else _flatten(values)
        return pack_bytes(flat)
    return np.ascontiguousarray(values, RAW_DTYPES[datatype]).tobytes()


def _flatten(values: Any) -> list[Any]:
    if isinstance(values, list | tuple):
        return [v for item in values for v in _flatten(item)]
    return [values]
