"""V2 tensor datatypes and their NumPy dtypes: the one table every path reads.

V2's raw tensor contents (gRPC's ``raw_input_contents``, the binary data of REST) are
little-endian and row-major; BYTES elements are length-prefixed strings and have no
fixed-size dtype.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

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

_BY_DTYPE: dict[np.dtype, str] = {np.dtype(t): name for name, t in NUMPY_DTYPES.items()}


@functools.cache
def datatype_of(dtype: np.dtype) -> str | None:
    """The V2 datatype of a NumPy dtype (either byte order); BYTES for strings and
    objects; None for what V2 cannot carry (complex numbers, dates)."""
    if dtype.kind in "OUS":
        return "BYTES"
    return _BY_DTYPE.get(dtype.newbyteorder("="))
