"""V2 calls with tritonclient over REST or gRPC, the same way for both."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

Client: TypeAlias = httpclient.InferenceServerClient | grpcclient.InferenceServerClient


def make_client(protocol: str, server: Any) -> Client:
    if protocol == "http":
        return httpclient.InferenceServerClient(server.http_url)
    return grpcclient.InferenceServerClient(server.grpc_url)


def infer(
    client: Client,
    model: str,
    inputs: dict[str, tuple[np.ndarray, str]],
    outputs: Sequence[str] = (),
) -> Any:
    """``inputs``: name -> (array, V2 datatype)."""
    mod = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    # MLServer's REST API speaks JSON tensors, not Triton's binary extension.
    binary = {} if mod is grpcclient else {"binary_data": False}
    request_inputs = []
    for name, (array, datatype) in inputs.items():
        request_input = mod.InferInput(name, list(array.shape), datatype)
        request_input.set_data_from_numpy(array, **binary)
        request_inputs.append(request_input)
    requested = [mod.InferRequestedOutput(o, **binary) for o in outputs] or None
    return client.infer(model, request_inputs, outputs=requested)


def ids(*values: str) -> tuple[np.ndarray, str]:
    return np.array([v.encode() for v in values], dtype=np.object_), "BYTES"


def texts(result: Any, name: str) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy(name).ravel()]


def expect_error(
    client: Client, call: Callable[[], Any], http_status: int, grpc_status: str, *fragments: str
) -> str:
    """The call fails with this status over either protocol; returns the message."""
    with pytest.raises(InferenceServerException) as info:
        call()
    err = info.value
    if isinstance(client, httpclient.InferenceServerClient):
        assert err.status() == str(http_status), err
    else:
        assert err.status() == f"StatusCode.{grpc_status}", err
    for fragment in fragments:
        assert fragment in err.message(), err.message()
    return err.message()
