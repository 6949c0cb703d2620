"""The binary tensor data extension of V2 REST, as tritonclient and the KServe SDK send it.

A request whose header `Inference-Header-Content-Length` is N carries N bytes of JSON,
then the raw bytes of every input whose parameters give `binary_data_size`, in the order
of the inputs (little-endian, row-major; BYTES elements each after a 4-byte length). An
answer carries its outputs the same way when the request asks for it: every output
(`"parameters": {"binary_data_output": true}`, what tritonclient sends when it names no
output) or the named ones (`"binary_data": true` on a requested output). It is also the
fast way to send many rows: no JSON numbers to parse or print.
"""

from __future__ import annotations

from typing import Any

import orjson
from mlserver.codecs.json import encode_to_json_bytes
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from pydantic import ValidationError

from modelyard.serving.tensors import raw_bytes, raw_tensor

HEADER = "inference-header-content-length"
OCTET_STREAM = b"application/octet-stream"


class BinaryError(InferenceError):
    """A request whose binary part does not fit its JSON header."""


def parse_request(body: bytes, header_length: str | None) -> InferenceRequest:
    """The request, JSON alone or a JSON header then the inputs' raw bytes (a decode
    error, a validation error or a `BinaryError` for what does not fit)."""
    if header_length is None:
        return validated(orjson.loads(body))
    try:
        size = int(header_length)
    except ValueError:
        raise BinaryError(
            f"Inference-Header-Content-Length {header_length!r} is not a number"
        ) from None
    if not 0 <= size <= len(body):
        raise BinaryError(
            f"Inference-Header-Content-Length {size} is not within the body's {len(body)} bytes"
        )
    header: dict[str, Any] = orjson.loads(body[:size])
    binary = memoryview(body)[size:]
    raw: list[tuple[int, bytes]] = []
    at = 0
    inputs = header.get("inputs") if isinstance(header, dict) else None
    for index, tensor in enumerate(inputs if isinstance(inputs, list) else []):
        parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            continue
        length = parameters.pop("binary_data_size")
        name = tensor.get("name")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise BinaryError(f"input '{name}': binary_data_size {length!r} is not a byte count")
        if at + length > len(binary):
            raise BinaryError(
                f"input '{name}': binary_data_size {length} runs past the {len(binary)} bytes "
                "after the JSON header"
            )
        raw.append((index, bytes(binary[at : at + length])))
        tensor.setdefault("data", [])
        at += length
    if at != len(binary):
        raise BinaryError(
            f"{len(binary) - at} bytes after the JSON header belong to no input; give each "
            "binary input its binary_data_size"
        )
    request = validated(header)
    for index, content in raw:
        tensor = request.inputs[index]
        tensor.data = raw_tensor(tensor.name, tensor.datatype, tensor.shape, content)
    return request


def validated(body: Any) -> InferenceRequest:
    """The request of a decoded JSON body; a 400 that names the input (or the field)
    pydantic finds wrong."""
    if not isinstance(body, dict):
        raise InferenceError(
            f'the request body is a JSON {type(body).__name__}; send an object with "inputs"'
        )
    try:
        return InferenceRequest.model_validate(body)
    except ValidationError as e:
        raise InferenceError("invalid inference request: " + _describe(body, e)) from None


def _describe(body: dict[str, Any], e: ValidationError) -> str:
    """pydantic's errors, each where it is (an input by its name) and what."""
    parts = []
    for err in e.errors()[:5]:
        loc = list(err["loc"])
        where = "/".join(str(p) for p in loc)
        inputs = body.get("inputs")
        if loc[:1] == ["inputs"] and len(loc) > 1 and isinstance(loc[1], int):
            tensor = inputs[loc[1]] if isinstance(inputs, list) else None
            name = tensor.get("name") if isinstance(tensor, dict) else None
            if isinstance(name, str):
                where = f"input '{name}': " + "/".join(str(p) for p in loc[2:])
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def _flag(parameters: Any, name: str) -> bool:
    return bool(parameters is not None and getattr(parameters, name, False) is True)


def binary_outputs(request: InferenceRequest) -> set[str] | None:
    """The outputs to answer in binary: None for all, an empty set for none."""
    if _flag(request.parameters, "binary_data_output"):
        return None
    return {o.name for o in request.outputs or () if _flag(o.parameters, "binary_data")}


def encode_response(
    response: InferenceResponse, binary: set[str] | None
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The response's body and the headers it needs: JSON, or a JSON header and the
    binary outputs' raw bytes."""
    data = response.model_dump(exclude_unset=True, exclude_none=True)
    if binary is not None and not binary:
        return encode_to_json_bytes(data), []
    chunks = []
    for output, dumped in zip(response.outputs, data.get("outputs", []), strict=True):
        if binary is not None and output.name not in binary:
            continue
        content = raw_bytes(output.datatype, output.data)
        dumped.pop("data", None)
        dumped.setdefault("parameters", {})["binary_data_size"] = len(content)
        chunks.append(content)
    header = encode_to_json_bytes(data)
    return header + b"".join(chunks), [
        (b"content-type", OCTET_STREAM),
        (HEADER.encode(), str(len(header)).encode()),
    ]
