"""Request checks and signature enforcement: every request is checked (inputs there,
each tensor's data fitting its datatype and shape, known content types) and, for a
model that declares them, against its declared inputs, before any model code sees it;
the response is checked against the declared outputs.

MLServer hands whatever arrives to the runtime, where a wrong shape surfaces as a
500 from deep inside numpy or scikit-learn; here it is a 400 that names the input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from mlserver.codecs.base import find_input_codec, find_request_codec
from mlserver.errors import InferenceError, MLServerError
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor, Parameters
from mlserver.types.dataplane import RequestInput, ResponseOutput, TensorData

from modelyard.serving.tensors import check_tensor

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


def check_request(model: str, inputs: Sequence[MetadataTensor], payload: InferenceRequest) -> None:
    """Any model's request: its inputs (against the declared ones when ``inputs``
    declares them), each tensor's data, which it holds checked after (numbers as NumPy
    arrays), and the content types it names."""
    if not payload.inputs:
        raise InferenceError(
            f"model '{model}': the request has no inputs; send them in \"inputs\""
            + (f" (it takes {', '.join(repr(t.name) for t in inputs)})" if inputs else "")
        )
    _check_codec(model, "the request", payload.parameters, find_request_codec)
    if inputs:
        check_inputs(model, inputs, payload.inputs)
    seen: set[str] = set()
    for tensor in payload.inputs:
        if tensor.name in seen:
            raise InferenceError(f"model '{model}': input '{tensor.name}' is sent twice")
        seen.add(tensor.name)
        _check_codec(model, f"input '{tensor.name}'", tensor.parameters, find_input_codec)
        data = tensor.data.root
        checked = check_tensor(tensor.name, tensor.datatype, tensor.shape, data)
        if checked is not data:
            tensor.data = TensorData.model_construct(root=checked)


def _check_codec(
    model: str, where: str, parameters: Parameters | None, find: Callable[[str], object]
) -> None:
    content_type = parameters.content_type if parameters is not None else None
    if content_type is not None and find(content_type) is None:
        raise InferenceError(
            f"model '{model}': {where} has content_type {content_type!r}, which no codec of "
            "this server decodes; leave it out, or name a codec its runtime has (np, pd, str...)"
        )


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
