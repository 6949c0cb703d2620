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


# -- checking what a request's tensors carry ----------------------------------------------

_INTEGERS = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOATS = {"FP16", "FP32", "FP64"}
# The JSON (or protobuf) types each datatype's elements may have.
_ELEMENT_TYPES: dict[str, frozenset[type]] = {
    **{d: frozenset({int, float}) for d in _INTEGERS},  # floats: whole ones only
    **{d: frozenset({int, float}) for d in _FLOATS},
    "BOOL": frozenset({bool}),
    "BYTES": frozenset({str, bytes}),
}
_FLOAT_MAX = {d: float(np.finfo(RAW_DTYPES[d]).max) for d in _FLOATS}
_INT_RANGE = {d: (int(np.iinfo(RAW_DTYPES[d]).min), int(np.iinfo(RAW_DTYPES[d]).max))
              for d in _INTEGERS}  # fmt: skip
_TYPE_NAMES = {int: "an integer", float: "a number", bool: "a boolean", str: "a string",
               bytes: "bytes", type(None): "null", dict: "an object", list: "a list"}  # fmt: skip


def check_shape(name: str, shape: Sequence[int]) -> int:
    """The number of elements of a shape; a 400 naming the input for a negative or a
    zero dimension (no rows to predict)."""
    if any(d < 0 for d in shape):
        raise _bad(name, f"shape {list(shape)} has a negative dimension; give each its size")
    count = math.prod(shape)
    if count == 0:
        raise _bad(name, f"shape {list(shape)} holds no values; send at least one")
    return count


def check_tensor(name: str, datatype: str, shape: Sequence[int], data: Any) -> Any:
    """A request tensor's data checked against its datatype and shape, in one vectorised
    pass for numbers: what to predict from (a NumPy array for a fixed-size datatype, the
    elements for BYTES); a 400 naming the input for anything that does not fit."""
    if datatype not in NUMPY_DTYPES:
        raise _bad(name, f"unknown datatype {datatype!r}; V2 datatypes are {', '.join(DATATYPES)}")
    expected = check_shape(name, shape)
    if isinstance(data, np.ndarray):  # raw bytes, already read to their datatype
        return data
    if not isinstance(data, list):
        raise _bad(name, f"data is {_TYPE_NAMES.get(type(data), type(data).__name__)}; "
                   f"send a list of {expected} {datatype} values")  # fmt: skip
    flat, depth = data, 1
    kinds = set(map(type, flat))
    while kinds == {list}:  # nested evenly so far: one level down
        flat = _chain(flat)
        kinds = set(map(type, flat))
        depth += 1
    allowed = _ELEMENT_TYPES[datatype]
    if not kinds <= allowed:
        wrong = next(iter(kinds - allowed))
        if wrong is list:
            raise _bad(name, f"data is nested unevenly (ragged); nest it as its shape "
                       f"{list(shape)} or send it flat")  # fmt: skip
        raise _bad(name, f"{datatype} data has {_TYPE_NAMES.get(wrong, wrong.__name__)} "
                   f"among its values; every value must be {_element_name(datatype)}")  # fmt: skip
    if len(flat) != expected:
        raise _bad(name, f"carries {len(flat)} values, but its shape {list(shape)} needs "
                   f"{expected}")  # fmt: skip
    if depth not in (1, len(shape)):
        raise _bad(name, f"data is nested {depth} deep, but its shape {list(shape)} has "
                   f"{len(shape)}; nest it as its shape or send it flat")  # fmt: skip
    if datatype == "BYTES":
        return data
    return _numbers(name, datatype, shape, data if depth == 1 else flat, float in kinds)


def _element_name(datatype: str) -> str:
    if datatype in _FLOATS:
        return "a number"
    if datatype in _INTEGERS:
        return "an integer"
    return "a boolean" if datatype == "BOOL" else "a string"


def _chain(rows: list[list[Any]]) -> list[Any]:
    lengths = set(map(len, rows))
    if len(lengths) > 1:
        return [*rows[0], rows[1:]]  # ragged: a list among the values says so
    return [v for row in rows for v in row]


def _numbers(name: str, datatype: str, shape: Sequence[int], flat: list[Any],
             fractions: bool) -> np.ndarray:  # fmt: skip
    """Numbers of one JSON type set as an array of the datatype, each in its range."""
    dtype = RAW_DTYPES[datatype]
    if datatype in _INTEGERS:
        if fractions:  # floats among integers: only whole ones
            as_float = np.asarray(flat, np.float64)
            if not np.array_equal(as_float, np.floor(as_float)):
                raise _bad(name, f"{datatype} data has a fractional number among its values")
        low, high = _INT_RANGE[datatype]
        try:
            wide = np.asarray(flat, np.float64 if fractions else np.int64)
        except OverflowError:
            raise _bad(name, f"a value is out of the range of {datatype}") from None
        if wide.min() < low or wide.max() > high:
            raise _bad(name, f"a value is out of the range of {datatype} ({low} to {high})")
        return wide.astype(dtype)
    if datatype == "BOOL":
        return np.asarray(flat, dtype)
    values = np.asarray(flat, np.float64)  # JSON numbers all fit FP64
    if datatype == "FP64":
        return values
    largest = _FLOAT_MAX[datatype]
    if values.max() > largest or values.min() < -largest:
        raise _bad(name, f"a value is out of the range of {datatype} (±{largest:.4g})")
    return values.astype(dtype)


def non_finite(data: Any) -> bool:
    """Whether numeric tensor data carries NaN or an infinity (vectorised)."""
    values = getattr(data, "root", data)
    if not isinstance(values, np.ndarray):
        try:
            values = np.asarray(values, np.float64)
        except (TypeError, ValueError):
            return False
    return values.dtype.kind == "f" and not bool(np.isfinite(values).all())
