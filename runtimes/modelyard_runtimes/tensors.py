"""Between V2 tensors and what a model's code takes and returns.

Shared by the runtimes that answer per entity id (predictor with features, lookup):
ids come in one input named after the key; answers go out one row per requested id,
in request order, with a ``missing`` flag for the ids nobody knows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.codecs.utils import inject_batch_dimension
from mlserver.errors import InferenceError
from mlserver.types import (
    InferenceRequest,
    MetadataTensor,
    Parameters,
    RequestOutput,
    ResponseOutput,
)

from modelyard.serving.tensors import NUMPY_DTYPES, datatype_of
from modelyard_runtimes.errors import ModelError

# The output flagging the requested ids that matched nothing.
MISSING_OUTPUT = "missing"
# The output a model's single unnamed result is called when no outputs are declared
# (MLServer's sklearn runtime says the same).
DEFAULT_OUTPUT = "predict"

ID_DATATYPES = {"BYTES", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}


def decode_ids(model: str, key: str, payload: InferenceRequest) -> list[Any]:
    """The entity ids of a request: strings for BYTES, ints for integer datatypes."""
    names = [i.name for i in payload.inputs]
    if key not in names:
        raise InferenceError(
            f"model '{model}': missing input '{key}'; send the {key} values to predict for "
            "(BYTES or integers, shape [-1])"
        )
    if len(names) > 1:
        others = ", ".join(repr(n) for n in names if n != key)
        raise InferenceError(
            f"model '{model}' takes only input '{key}' (its features are fetched by {key}); "
            f"remove {others}"
        )
    request_input = payload.inputs[0]
    if request_input.datatype not in ID_DATATYPES:
        raise InferenceError(
            f"model '{model}': input '{key}' has datatype {request_input.datatype}; "
            "ids are BYTES or integers"
        )
    try:
        if request_input.datatype == "BYTES":
            return StringCodec.decode_input(request_input)
        return NumpyCodec.decode_input(request_input).ravel().tolist()
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise InferenceError(f"model '{model}': cannot read input '{key}': {e}") from None


def named_results(model: str, result: Any, default_name: str) -> dict[str, Any]:
    """What a model returned, by output name: a dict as is, a DataFrame by column,
    anything else as one output called ``default_name``."""
    if isinstance(result, pd.DataFrame):
        return {str(c): result[c] for c in result.columns}
    if isinstance(result, Mapping):
        return {str(k): v for k, v in result.items()}
    if result is None:
        raise ModelError(f"model '{model}' returned nothing (None); return its predictions")
    return {default_name: result}


def column(model: str, name: str, value: Any, rows: int) -> np.ndarray:
    """One output as a column of ``rows`` values."""
    array = np.asarray(value)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1 or len(array) != rows:
        raise ModelError(
            f"model '{model}': output '{name}' has shape {list(array.shape)}; a prediction "
            f"column needs one value for each of the {rows} entities scored"
        )
    return array


def cast_column(model: str, name: str, values: Any, datatype: str) -> np.ndarray:
    """``values`` in the numpy dtype of a V2 datatype; BYTES become Python strings."""
    array = np.asarray(values)
    if datatype == "BYTES":
        if array.dtype.kind == "U":
            return array.astype(object)
        if (
            array.dtype == object
            and pd.api.types.infer_dtype(array.ravel(), skipna=False) == "string"
        ):
            return array  # text already (a batch's keys): no Python work per value
        return np.array([_as_text(v) for v in array.ravel()], dtype=object).reshape(array.shape)
    try:
        return array.astype(NUMPY_DTYPES[datatype])
    except (ValueError, TypeError) as e:
        raise ModelError(
            f"model '{model}': output '{name}' cannot be converted to its declared "
            f"datatype {datatype}: {e}"
        ) from None


def _as_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value)


def _infer_datatype(array: np.ndarray) -> str:
    datatype = datatype_of(array.dtype)
    if datatype is None:
        raise ModelError(f"cannot send numpy dtype {array.dtype} over V2; convert it to a number")
    return datatype


def encode_output(
    model: str, name: str, value: Any, datatype: str | None, declared_rank: int | None
) -> ResponseOutput:
    """One V2 output; its datatype is the declared one (values converted) or inferred.

    NaN stays NaN: over REST MLServer's JSON writes it as null, over gRPC it is a float.
    """
    array = value.to_numpy() if isinstance(value, pd.Series | pd.DataFrame) else np.asarray(value)
    datatype = datatype or _infer_datatype(array)
    array = cast_column(model, name, array, datatype)
    if declared_rank == 1 and array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    shape = list(array.shape)
    if declared_rank != len(shape):
        shape = inject_batch_dimension(shape)
    if datatype == "BYTES":
        data: list[Any] = [v.encode("utf-8") for v in array.ravel()]
        parameters = Parameters(content_type=StringCodec.ContentType)
    else:
        data = array.ravel().tolist()
        parameters = Parameters(content_type=NumpyCodec.ContentType)
    return ResponseOutput(
        name=name, shape=shape, datatype=datatype, data=data, parameters=parameters
    )


def encode_outputs(
    model: str,
    results: Mapping[str, Any],
    declared: Sequence[MetadataTensor],
    datatypes: Mapping[str, str],
    requested: Sequence[RequestOutput] | None,
) -> list[ResponseOutput]:
    """The outputs a request asked for (all, when it names none), each in the datatype
    and rank its model declares."""
    metadata = {t.name: t for t in declared}
    names = list(results)
    if requested:
        unknown = [o.name for o in requested if o.name not in results]
        if unknown:
            raise InferenceError(
                f"model '{model}' has no output {', '.join(repr(n) for n in unknown)}; "
                f"it returns {', '.join(repr(n) for n in results)}"
            )
        names = [o.name for o in requested]
    outputs = []
    for name in names:
        spec = metadata.get(name)
        datatype = spec.datatype if spec else datatypes.get(name)
        rank = len(spec.shape) if spec else None
        outputs.append(encode_output(model, name, results[name], datatype, rank))
    return outputs


def align(ids: Sequence[Any] | np.ndarray, scores: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per requested id, in request order (repeats repeated), from ``scores``
    (one row per known id); unknown ids get empty values (NaN, "", 0, false) and
    ``missing`` set."""
    row_of = {k: i for i, k in enumerate(scores[key].tolist())}
    rows = np.array([row_of.get(i, -1) for i in ids], dtype=np.intp)
    missing = rows < 0
    aligned: dict[str, Any] = {key: np.asarray(ids, dtype=object)}
    for name in scores.columns:
        if name == key:
            continue
        values = scores[name].to_numpy()
        empty = {"f": np.nan, "c": np.nan, "M": np.datetime64("NaT"), "O": "", "b": False}.get(
            values.dtype.kind, 0
        )
        out = np.full(len(rows), empty, dtype=values.dtype)
        out[~missing] = values[rows[~missing]]
        aligned[name] = out
    aligned[MISSING_OUTPUT] = missing
    return pd.DataFrame(aligned)
