"""Signature enforcement: a request is checked against the model's declared inputs
before any model code sees it, and the response against its declared outputs.

MLServer hands whatever arrives to the runtime, where a wrong shape surfaces as a
500 from deep inside numpy or scikit-learn; here it is a 400 that names the input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from mlserver.errors import InferenceError, MLServerError
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor
from mlserver.types.dataplane import RequestInput, ResponseOutput

# The signature as declared, kept before load(): some runtimes (Hugging Face) append
# their own metadata to the settings' inputs while loading.
SIGNATURE_ATTR = "_modelyard_signature"


Signature = tuple[Sequence[MetadataTensor], Sequence[MetadataTensor]]


def declared_signature(settings: ModelSettings) -> Signature:
    """``settings``' declared inputs and outputs, as they are before the model loads."""
    return list(settings.inputs or ()), list(settings.outputs or ())


def keep_signature(model: object, signature: Signature) -> None:
    setattr(model, SIGNATURE_ATTR, signature)


def declared(model: object) -> Signature:
    """A loaded model's declared inputs and outputs (none for a model loaded elsewhere)."""
    return getattr(model, SIGNATURE_ATTR, ((), ()))


class Tensor(Protocol):
    """What the checks read of a tensor: MLServer's types, or gRPC's messages."""

    name: str
    datatype: str
    shape: Sequence[int]


class OutputSignatureError(MLServerError):
    """The model answered outside its declared outputs: the model's fault, not the client's."""

    def __init__(self, msg: str):
        super().__init__(msg, status_code=500)


def _shape_fits(declared: Sequence[int], actual: Sequence[int]) -> bool:
    if len(declared) != len(actual):
        return False
    return all(d < 0 or d == a for d, a in zip(declared, actual, strict=True))


def _count(data: object) -> int | None:
    """Number of scalars in tensor data (nested lists flatten, a numpy array from raw
    gRPC contents counts its elements); None if unknown."""
    if isinstance(data, np.ndarray):
        return data.size
    if isinstance(data, list | tuple):
        return (
            sum((_count(d) or 0) for d in data)
            if data and isinstance(data[0], list | tuple)
            else len(data)
        )
    if data is None:
        return None
    return 1


def _describe(shape: Sequence[int]) -> str:
    return "[" + ", ".join("-1" if d < 0 else str(d) for d in shape) + "]"


def check_input(model: str, declared: MetadataTensor, given: RequestInput | Tensor) -> None:
    where = f"model '{model}': input '{given.name}'"
    if given.datatype != declared.datatype:
        raise InferenceError(f"{where} has datatype {given.datatype}; expected {declared.datatype}")
    if not _shape_fits(declared.shape, given.shape):
        raise InferenceError(
            f"{where} has shape {list(given.shape)}; expected {_describe(declared.shape)} "
            "(-1 is any size)"
        )
    data = getattr(given, "data", None)  # a gRPC tensor's raw contents are counted apart
    n = _count(getattr(data, "root", data))
    expected = math.prod(given.shape)
    if n is not None and given.datatype != "BYTES" and n != expected:
        raise InferenceError(
            f"{where} carries {n} values, but its shape {list(given.shape)} needs {expected}"
        )


def check_request(model: str, inputs: Sequence[MetadataTensor], payload: InferenceRequest) -> None:
    check_inputs(model, inputs, payload.inputs)


def check_inputs(
    model: str, inputs: Sequence[MetadataTensor], tensors: Sequence[RequestInput | Tensor]
) -> None:
    declared = {t.name: t for t in inputs}
    given = {i.name: i for i in tensors}
    unknown = [n for n in given if n not in declared]
    if unknown:
        raise InferenceError(
            f"model '{model}': unknown input {', '.join(repr(n) for n in unknown)}; "
            f"it takes {', '.join(repr(n) for n in declared)}"
        )
    missing = [n for n in declared if n not in given]
    if missing:
        t = declared[missing[0]]
        raise InferenceError(
            f"model '{model}': missing input '{t.name}' ({t.datatype}, shape {_describe(t.shape)})"
        )
    for name, tensor in given.items():
        check_input(model, declared[name], tensor)


def check_response(
    model: str,
    outputs: Sequence[MetadataTensor],
    payload: InferenceRequest,
    response: InferenceResponse,
) -> None:
    check_outputs(model, outputs, response.outputs, every=not payload.outputs)


def check_outputs(
    model: str,
    outputs: Sequence[MetadataTensor],
    tensors: Sequence[ResponseOutput | Tensor],
    every: bool,
) -> None:
    """The outputs against their declarations; ``every`` declared one must be there
    when the request named none."""
    declared = {t.name: t for t in outputs}
    got = {o.name: o for o in tensors}
    if every:
        missing = [n for n in declared if n not in got]
        if missing:
            raise OutputSignatureError(
                f"model '{model}' did not return its declared output '{missing[0]}'; "
                f"it returned {', '.join(repr(n) for n in got) or 'nothing'}"
            )
    for name, out in got.items():
        spec = declared.get(name)
        if spec is None:
            continue
        if out.datatype != spec.datatype or len(out.shape) != len(spec.shape):
            raise OutputSignatureError(
                f"model '{model}' returned output '{name}' as {out.datatype} "
                f"shape {list(out.shape)}; its declaration says {spec.datatype} "
                f"shape {_describe(spec.shape)}"
            )
