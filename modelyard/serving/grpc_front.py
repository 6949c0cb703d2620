"""The gRPC port answered by `modelyard-grpc-front`, a Go process, for this server.

Python's gRPC server costs more per call than a light model's prediction: about
0.45 ms of its own per unary call here, where the Go front end's is under 0.1 ms. The
front end (`front/main.go`) listens on the gRPC port and hands each ModelInfer request
to this process as its protobuf bytes over a Unix socket, answered here by the same
`InferenceServicer.answer` as MLServer's gRPC server would; every other method is
proxied to that server, which then listens on a second Unix socket.

Without the binary (a plain `pip install`), or with ``MODELYARD_GRPC_FRONT=off``,
MLServer's gRPC server listens on the port itself, as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from mlserver.grpc import dataplane_pb2 as pb

from modelyard.serving.grpc import Answer, InferenceServicer
from modelyard.serving.processes import unpinned

logger = logging.getLogger(__name__)

BINARY = "modelyard-grpc-front"
FRONT_ENV = "MODELYARD_GRPC_FRONT"
RESTART_DELAY = 0.5  # seconds before a front end that died is started again
MAX_RESTART_DELAY = 8.0


def front_binary() -> Path | None:
    """The front end to run: ``$MODELYARD_GRPC_FRONT`` (a path, or ``off``), else the
    one installed beside this Python (``make`` builds it there), else one on PATH."""
    chosen = os.environ.get(FRONT_ENV, "")
    if chosen == "off":
        return None
    if chosen:
        return Path(chosen)
    beside = Path(sys.executable).parent / BINARY
    if beside.is_file():
        return beside
    found = shutil.which(BINARY)
    return Path(found) if found else None


def _pack_metadata(pairs: tuple[tuple[str, str | bytes], ...]) -> bytes:
    out = bytearray()
    for key, value in pairs:
        k, v = key.encode(), value.encode() if isinstance(value, str) else value
        out += len(k).to_bytes(2, "little") + k + len(v).to_bytes(4, "little") + v
    return bytes(out)


def _unpack_metadata(data: memoryview) -> list[tuple[str, str | bytes]]:
    pairs, at = [], 0
    while at < len(data):
        klen = int.from_bytes(data[at : at + 2], "little")
        key = bytes(data[at + 2 : at + 2 + klen]).decode()
        at += 2 + klen
        vlen = int.from_bytes(data[at : at + 4], "little")
        # Binary ("-bin") values stay bytes, as gRPC gives them.
        value = bytes(data[at + 4 : at + 4 + vlen])
        pairs.append((key, value if key.endswith("-bin") else value.decode()))
        at += 4 + vlen
    return pairs


def reply_frame(answer: Answer) -> bytes:
    """u32 length | u8 code | u32 metadata length | metadata | response or message."""
    trailing = _pack_metadata(answer.trailing)
    if answer.response is not None:
        body = answer.response.SerializeToString()
    else:
        body = answer.message.encode()
    head = (
        (5 + len(trailing) + len(body)).to_bytes(4, "little")
        + bytes([answer.code.value[0]])
        + len(trailing).to_bytes(4, "little")
    )
    return head + trailing + body


class InferSocket(asyncio.Protocol):
    """One front end connection: frames of ``u32 length | u32 metadata length |
    metadata | ModelInferRequest``, one call at a time, each answered in turn."""

    def __init__(self, servicer: InferenceServicer):
        self.servicer = servicer
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.calls: set[asyncio.Task] = set()  # held until done, not collected mid-call

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 8:
            size = int.from_bytes(self.buffer[:4], "little")
            if len(self.buffer) < 4 + size:
                return
            with memoryview(self.buffer) as view:  # one copy of the frame, not two
                frame = bytes(view[4 : 4 + size])
            del self.buffer[: 4 + size]
            call = asyncio.ensure_future(self.answer(frame))
            self.calls.add(call)
            call.add_done_callback(self.calls.discard)

    async def answer(self, frame: bytes) -> None:
        view = memoryview(frame)
        md_len = int.from_bytes(view[:4], "little")
        try:
            metadata = _unpack_metadata(view[4 : 4 + md_len])
            request = pb.ModelInferRequest.FromString(view[4 + md_len :])
        except (DecodeError, UnicodeDecodeError, ValueError) as e:
            answer = Answer(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a V2 ModelInferRequest: {e}",
                None,
                (),
            )
        else:
            answer = await self.servicer.answer(request, metadata, len(frame))
        try:
            reply = reply_frame(answer)
        except Exception as e:  # a reply that cannot be framed still gets an answer
            logger.exception("a ModelInfer reply could not be framed")
            reply = reply_frame(
                Answer(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}", None, ())
            )
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)


class GRPCFront:
    """This process's front end, its two Unix sockets and its restarts."""

    def __init__(self, binary: Path, args: Sequence[str] = ()):
        self.binary = binary
        self.args = list(args)  # more flags of the front end (its TLS)
        # The gRPC server's settings, given to `start`.
        self.listen = ""
        self.max_message_bytes = 0
        self.max_metadata_bytes = 0
        self.directory: Path | None = None  # made by `start`, removed by `stop`
        self._server: asyncio.AbstractServer | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self.listening = False  # the port takes calls: set by `open`, cleared by an exit

    @property
    def infer_path(self) -> Path:
        assert self.directory is not None, "started"
        return self.directory / "infer.sock"

    @property
    def backend_path(self) -> Path:
        assert self.directory is not None, "started"
        return self.directory / "grpc.sock"

    @property
    def backend_address(self) -> str:
        """Where MLServer's gRPC server listens instead of the port."""
        return f"unix:{self.backend_path}"

    async def start(
        self,
        listen: str,
        max_message_bytes: int,
        max_metadata_bytes: int,
        servicer: InferenceServicer,
    ) -> None:
        """Listen on the infer socket and start the front end for the gRPC port
        ``listen``, which waits for `open`."""
        self.listen = listen
        self.max_message_bytes = max_message_bytes
        self.max_metadata_bytes = max_metadata_bytes
        self.directory = Path(tempfile.mkdtemp(prefix="modelyard-grpc-"))
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: InferSocket(servicer), str(self.infer_path)
        )
        await self._spawn()

    async def _spawn(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            str(self.binary),
            "--listen", self.listen,
            "--infer", str(self.infer_path),
            "--backend", str(self.backend_path),
            "--max-message-bytes", str(self.max_message_bytes),
            *self.args,
            "--max-metadata-bytes", str(self.max_metadata_bytes),
            stdin=asyncio.subprocess.PIPE,  # closed when this process ends: it exits too
            stdout=asyncio.subprocess.PIPE,
            # It answers best on a core this process is not busy on.
            preexec_fn=unpinned(),
        )  # fmt: skip

    async def open(self) -> None:
        """Take the port, once both sockets are up: no call is refused for want of them."""
        assert self._process is not None
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(b"listen\n")
        # It prints one line once it listens; it exits if it cannot.
        if not await self._process.stdout.readline():
            code = await self._process.wait()
            raise RuntimeError(
                f"{self.binary} exited with code {code} at start: is {self.listen} free? "
                f"Set {FRONT_ENV}=off to serve gRPC from Python instead."
            )
        self.listening = True
        logger.info("gRPC on %s through %s", self.listen, self.binary)

    async def supervise(self) -> None:
        """Restart the front end if it dies, so the gRPC port comes back."""
        delay = RESTART_DELAY
        while not self._stopping:
            assert self._process is not None
            code = await self._process.wait()
            self.listening = False
            if self._stopping:
                return
            logger.error("the gRPC front end exited with code %s; restarting it", code)
            await asyncio.sleep(delay)
            try:
                await self._spawn()
                await self.open()
                delay = RESTART_DELAY
            except RuntimeError as e:
                logger.error("%s", e)
                delay = min(delay * 2, MAX_RESTART_DELAY)  # a port held elsewhere: ask less often

    async def stop(self, grace: float) -> None:
        self._stopping = True
        if self._process is not None and self._process.returncode is None:
            assert self._process.stdin is not None
            # It stops taking calls, finishes its own within `grace` seconds, exits.
            self._process.stdin.write(f"stop {grace:g}\n".encode())
            self._process.stdin.close()
            try:
                await asyncio.wait_for(self._process.wait(), grace + 2)
            except TimeoutError:
                self._process.kill()
        if self._server is not None:
            self._server.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
