"""Large REST bodies decoded in a process of their own, so that the other calls of a
server process keep being answered while one is.

Parsing a JSON body holds the GIL from its first byte to its last: orjson builds a
Python object for every number (about 1 s for 24 MiB of FP64 rows on a loaded core),
and a thread does not help, since the event loop waits for the GIL as long. A body of
``HEAVY_BYTES`` or more is parsed by a decoding process instead (one per server
process, started with the first such body), which also checks each tensor and reads
its numbers into a NumPy array (`tensors.check_tensor`, as the data plane would), and
sends the request back pickled: the arrays travel as buffers, 40 MB in tens of ms.
The event loop is then left the prediction and the answer, short steps between which
the small calls of the process are answered.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import orjson
from mlserver.errors import InferenceError, MLServerError
from mlserver.types import InferenceRequest, TensorData
from pydantic import ValidationError

from modelyard.serving.binary import parse_request
from modelyard.serving.tensors import check_tensor

logger = logging.getLogger(__name__)

# Below it, a body is parsed on the event loop: handing it over would cost more than
# parsing it (1 MiB of JSON numbers parses in about 40 ms).
HEAVY_BYTES = 1024 * 1024


class Undecodable(Exception):
    """A body that is not a V2 request: the status and the message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message)
        self.status = status
        self.message = message


def decode(body: bytes, header_length: str | None) -> InferenceRequest:
    """The V2 request of a REST body (JSON, or JSON and binary tensors); `Undecodable`
    naming what is wrong."""
    try:
        return parse_request(body, header_length)
    except orjson.JSONDecodeError as e:
        raise Undecodable(400, f"request body is not valid JSON: {e}") from None
    except ValidationError as e:
        raise Undecodable(400, describe(e)) from None
    except MLServerError as e:
        raise Undecodable(e.status_code, str(e)) from None


def describe(e: ValidationError) -> str:
    """pydantic's errors as one line a client can act on: where and what."""
    parts = []
    for err in e.errors()[:5]:
        where = "/".join(str(p) for p in err["loc"])
        parts.append(f"{where}: {err['msg']}")
    return "invalid inference request: " + "; ".join(parts)


def decode_checked(body: bytes, header_length: str | None) -> InferenceRequest:
    """`decode`, in the decoding process: each tensor that passes its check comes back
    as the NumPy array the check reads (which the data plane then takes as it is); one
    that does not is left as sent, for the data plane to refuse in its usual order."""
    payload = decode(body, header_length)
    for tensor in payload.inputs:
        data = tensor.data.root
        try:
            checked = check_tensor(tensor.name, tensor.datatype, tensor.shape, data)
        except InferenceError:
            continue
        if checked is not data:
            tensor.data = TensorData.model_construct(root=checked)
    return payload


class Decoder:
    """This process's decoding of REST bodies: small ones here, heavy ones in a
    process of their own."""

    def __init__(self, heavy_bytes: int = HEAVY_BYTES):
        self.heavy_bytes = heavy_bytes
        self._pool: ProcessPoolExecutor | None = None

    async def decode(self, body: bytes, header_length: str | None) -> InferenceRequest:
        if len(body) < self.heavy_bytes:
            return decode(body, header_length)
        if self._pool is None:
            # Spawned, not forked: this process runs threads (gRPC's, the executor's).
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, decode_checked, body, header_length)
        except BrokenProcessPool:
            # Killed (the OOM killer, most likely): the next heavy body starts another.
            logger.error("the process decoding large request bodies died; starting another")
            self._pool = None
            raise Undecodable(
                503,
                "the server could not decode this large request (its decoding process "
                "died, out of memory perhaps); send it again, or a smaller one",
            ) from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
