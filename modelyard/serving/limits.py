"""What one REST client may cost a server process, on every path alike.

- A body is read whole before any endpoint sees it, and stopped with a 413 at
  ``--max-message-mb``: the bytes sent and, for ``Content-Encoding: gzip``, the bytes
  they expand to (decompressed a piece at a time, so a small body that would expand
  to gigabytes never does). A body that is not the gzip it says it is gets a 400.
- Deadlines: the request's headers (``--header-timeout-s``, from the connection's
  first byte or the request's), its body (``--body-timeout-s``, the whole body, so a
  client sending a byte a second cannot hold a connection) and an idle keep-alive
  connection (``--idle-timeout-s``). uvicorn has the last only.
- Drain: a stopping process answers every request it has received, those still in the
  port's queue included, then exits within ``--shutdown-grace-s``.
- Requests in flight: a process takes at most ``--max-inflight-mb`` of request bodies at
  once, REST and gRPC together (`InFlight`); a request beyond it gets 429 with
  Retry-After (REST) or RESOURCE_EXHAUSTED (gRPC), never a queue that grows without
  bound. A request alone in its process is always taken (``--max-message-mb`` bounds it).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelyard.serving.listeners import HTTPServer

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_HEADER_TIMEOUT_S = 10.0
# The whole body: 64 MB in 120 s needs about 0.5 MB/s.
DEFAULT_BODY_TIMEOUT_S = 120.0
# Longer than the idle timeouts of common load balancers (60 s), so a proxy never
# sends a request on a connection this server is closing.
DEFAULT_IDLE_TIMEOUT_S = 75.0
# Inside Kubernetes' default 30 s termination grace period.
DEFAULT_SHUTDOWN_GRACE_S = 20.0
# How long a stopping process lets the connections it takes from the port's queue
# read the requests their clients have sent.
ADOPT_READ_S = 0.2
# How long a connection closed with a request still arriving reads (and drops) what
# its client sends before it is closed for good: a socket closed with unread bytes is
# reset, and a reset can discard the answer (a 408, a 413) before the client reads it.
LINGER_S = 2.0

GZIP = {"gzip", "x-gzip"}
# The most a gzip body is decoded in one step: zlib's buffer for a step is copied once
# more at its end, so a step the size of the limit would hold twice the limit.
PIECE = 1024 * 1024


# Two requests of the default --max-message-mb at once, or thousands of small ones.
DEFAULT_MAX_INFLIGHT_MB = 128
# What a refused client is told to wait before it sends the request again.
RETRY_AFTER_S = 1
# A process is busy (`InFlight.busy`) while the requests it takes come with less idle
# time than this before them (a saturated one reads the next as soon as one is answered;
# a client calling in turn takes a millisecond or more to send the next)...
BUSY_GAP_S = 0.0002
# ... and the last of them came this recently.
BUSY_WINDOW_S = 0.01


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    shutdown_grace_s: float = DEFAULT_SHUTDOWN_GRACE_S


class InFlight:
    """The request bytes one process has taken and not yet answered, REST and gRPC
    alike, within a budget: `take` says whether one more request of ``size`` bytes fits
    (one is always taken when nothing else is in flight), `give` returns it."""

    def __init__(self, limit_bytes: int, clock: Callable[[], float] = time.monotonic):
        self.limit = limit_bytes
        self._clock = clock
        self.bytes = 0
        self.calls = 0  # the requests those bytes are of
        # For `busy`: when the last request was taken and the one before it answered, and
        # the idle time between the two (none when one was in flight already).
        self.taken_at = self.given_at = -BUSY_WINDOW_S
        self.gap = BUSY_WINDOW_S

    def take(self, size: int) -> bool:
        if self.bytes and self.bytes + size > self.limit:
            return False
        self.bytes += size
        now = self._clock()
        self.gap = now - self.given_at if self.calls == 0 else 0.0
        self.calls += 1
        self.taken_at = now
        return True

    def give(self, size: int) -> None:
        self.bytes -= size
        self.calls -= 1
        self.given_at = self._clock()

    def busy(self, within_a_call: bool) -> bool:
        """Whether this process is answering requests besides the caller's own (one, when
        ``within_a_call``): another in flight, or the last one taken with next to no idle
        time before it (BUSY_GAP_S) within BUSY_WINDOW_S. A model that answers without
        awaiting is answered a request at a time, so a saturated process has none in
        flight besides the current one: only the next, waiting to be read as soon as it
        is done. A client calling one request after another leaves it idle between them."""
        if self.calls > (1 if within_a_call else 0):
            return True
        return self.gap < BUSY_GAP_S and self._clock() - self.taken_at < BUSY_WINDOW_S

    def refusal(self, size: int) -> str:
        mb = 1024 * 1024
        return (
            f"the server process has {self.bytes / mb:.1f} MB of requests in flight and this "
            f"one of {size / mb:.1f} MB would take it over its budget of {self.limit / mb:g} "
            f"MB; send it again in {RETRY_AFTER_S} s, or raise `modelyard serve "
            "--max-inflight-mb` (MODELYARD_MAX_INFLIGHT_MB)"
        )


class Refused(Exception):
    """A request refused before any endpoint sees it: its status and the message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def too_large(limit: int, what: str) -> Refused:
    mb = limit / (1024 * 1024)
    return Refused(
        413,
        f"request body {what} over the limit of {limit} bytes ({mb:g} MB); "
        "raise it with `modelyard serve --max-message-mb` (MODELYARD_MAX_MESSAGE_MB)",
    )


class BodyLimits:
    """ASGI middleware: every request's body read whole within the size limit (gzip
    decoded), then handed to ``app`` as one message. Its deadline is the connection's
    (`Deadlines`)."""

    def __init__(self, app: ASGIApp, limits: Limits, inflight: InFlight | None = None):
        self.app = app
        self.limits = limits
        self.inflight = inflight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        taken = 0
        try:
            try:
                scope, body, taken = await self._read(scope, receive)
            except Refused as e:
                await _refuse(send, e.status, str(e))
                return
            except ClientGone:
                return
            await self.app(scope, _replay(body, receive), send)
        finally:
            if taken:
                self._give(taken)

    def _take(self, size: int) -> int:
        """``size`` bytes taken from the process's budget (what to give back), or a 429."""
        if self.inflight is None or not size:
            return 0
        if not self.inflight.take(size):
            raise Refused(429, self.inflight.refusal(size))
        return size

    async def _read(self, scope: Scope, receive: Receive) -> tuple[Scope, bytes, int]:
        """The body within the limits, and the bytes of the process's budget it took
        (`InFlight`): a plain body's Content-Length before it is read (a refused body is
        never read), else its size once read (decoded, for gzip)."""
        limit = self.limits.max_body_bytes
        headers = scope["headers"]
        declared = encoding = None
        for key, value in headers:  # names come lower-cased from uvicorn
            if key == b"content-length":
                declared = value
            elif key == b"content-encoding":
                encoding = value.decode("latin-1").strip().lower()
        if declared is not None:
            if not declared.isdigit():
                raise Refused(400, "Content-Length is not a number of bytes")
            if int(declared) > limit:
                raise too_large(limit, f"of {int(declared)} bytes is")
        encoding = encoding or "identity"
        if encoding not in GZIP and encoding != "identity":
            raise Refused(
                415,
                f"Content-Encoding {encoding!r} is not supported; send the body as is "
                "or with Content-Encoding: gzip",
            )
        taken = self._take(int(declared)) if declared is not None and encoding == "identity" else 0
        try:
            scope, body = await self._body(scope, receive, headers, encoding)
            return scope, body, taken or self._take(len(body))
        except BaseException:
            if taken:
                self._give(taken)
            raise

    def _give(self, size: int) -> None:
        assert self.inflight is not None
        self.inflight.give(size)

    async def _body(
        self, scope: Scope, receive: Receive, headers: list[tuple[bytes, bytes]], encoding: str
    ) -> tuple[Scope, bytes]:
        limit = self.limits.max_body_bytes
        gunzip = Gunzip(limit) if encoding in GZIP else None
        chunks: list[bytes] = []
        sent = size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            sent += len(chunk)
            if sent > limit:
                raise too_large(limit, f"of more than {limit} bytes is")
            if gunzip is not None:
                chunk = gunzip.feed(chunk)
            size += len(chunk)
            if chunk:
                chunks.append(chunk)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if gunzip is None:
            return scope, body
        gunzip.finish()
        # The app sees the decoded body, as if sent so: nothing decodes it twice.
        kept = [(k, v) for k, v in headers if k not in (b"content-encoding", b"content-length")]
        kept.append((b"content-length", str(size).encode()))
        return {**scope, "headers": kept}, body


class Gunzip:
    """A gzip body decoded as it arrives, never beyond ``limit`` bytes."""

    def __init__(self, limit: int):
        self.limit = limit
        self.size = 0
        self.started = False
        self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        while data:
            self.started = True
            try:
                piece = self._decoder.decompress(data, min(self.limit - self.size + 1, PIECE))
            except zlib.error as e:
                logger.info("a request's gzip body could not be decoded: %s", e)
                raise Refused(
                    400,
                    "request body is not valid gzip data, though sent with "
                    "Content-Encoding: gzip; compress it with gzip or drop the header",
                ) from None
            self.size += len(piece)
            if self.size > self.limit:
                raise too_large(self.limit, f"decompressed to more than {self.limit} bytes is")
            out.append(piece)
            if self._decoder.eof:  # gzip allows several members, one after the other
                data = self._decoder.unused_data
                if data:
                    self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                data = self._decoder.unconsumed_tail
        return b"".join(out)

    def finish(self) -> None:
        if self.started and not self._decoder.eof:
            raise Refused(
                400,
                "request body is truncated gzip data (Content-Encoding: gzip); "
                "send the whole compressed body",
            )


class ClientGone(Exception):
    pass


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body as one message, then the connection's own messages (a disconnect)."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


async def _refuse(send: Send, status: int, message: str) -> None:
    """A JSON error that closes the connection: the rest of the body is never read."""
    body = error_body(message)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    if status == 429:
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LingeringClose:
    """A connection's transport whose ``close`` first sends what is written and a FIN,
    and closes for good once the client closes too, or after `LINGER_S`."""

    def __init__(self, transport: asyncio.Transport):
        self._transport = transport
        self._closing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self._closing or self._transport.is_closing()

    def close(self) -> None:
        if self.is_closing():
            return
        self._closing = True
        try:
            self._transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            self._transport.close()
            return
        asyncio.get_running_loop().call_later(LINGER_S, self._transport.close)


class Deadlines(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 connection with a deadline for each request's headers (from
    the connection's opening, and from the first byte of each later request) and one
    for its whole body (from its headers); closed lingering (`LingeringClose`).

    A request whose headers and body arrive together, as most do, starts no timer."""

    header_timeout_s = DEFAULT_HEADER_TIMEOUT_S
    body_timeout_s = DEFAULT_BODY_TIMEOUT_S
    _timer: asyncio.TimerHandle | None = None
    _in_headers = True  # a request has begun whose headers are not all in

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(LingeringClose(transport))  # type: ignore[arg-type]
        self._arm(self.header_timeout_s, self._headers_late)

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():  # dropped: the connection is closing
            return
        super().data_received(data)
        if self._timer is not None or self.transport.is_closing():
            return
        if self._in_headers:
            self._arm(self.header_timeout_s, self._headers_late)
        elif self.cycle is not None and self.cycle.more_body and not self.cycle.response_complete:
            self._arm(self.body_timeout_s, self._body_late)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """The server stops: a request whose body is still arriving has not been
        received, and is refused at once rather than waited for."""
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.more_body
            and not cycle.response_started
            and not cycle.response_complete
        ):
            self._refuse(
                b"503 Service Unavailable",
                "the server is stopping and had not received the whole request body; "
                "send the request again",
            )
            return
        super().shutdown()

    def _arm(self, seconds: float, late: Callable[[], None]) -> None:
        self._timer = self.loop.call_later(seconds, late)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        if self._in_headers:
            self._refuse(
                b"408 Request Timeout",
                f"request headers not received within {self.header_timeout_s:g} s; "
                "send them at once, or raise `modelyard serve --header-timeout-s`",
            )

    def _body_late(self) -> None:
        self._timer = None
        if self.cycle is not None and not self.cycle.response_started:
            self._refuse(
                b"408 Request Timeout",
                f"request body not received within {self.body_timeout_s:g} s; "
                "send it faster, or raise `modelyard serve --body-timeout-s`",
            )

    def _refuse(self, status: bytes, message: str) -> None:
        """An error and the close; an app still waiting for the body sees a disconnect."""
        if self.transport.is_closing():
            return
        body = error_body(message)
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, len(body), body)
        )
        self.transport.close()


def rest_config(
    app: ASGIApp, limits: Limits, debug: bool, inflight: InFlight | None = None
) -> uvicorn.Config:
    """uvicorn's settings for a REST port behind ``limits`` (and the process's budget
    of requests in flight)."""
    protocol = type(
        "Deadlines",
        (Deadlines,),
        {"header_timeout_s": limits.header_timeout_s, "body_timeout_s": limits.body_timeout_s},
    )
    return uvicorn.Config(
        BodyLimits(app, limits, inflight),
        http=protocol,
        access_log=debug,
        lifespan="off",
        timeout_keep_alive=int(limits.idle_timeout_s),
        timeout_graceful_shutdown=int(limits.shutdown_grace_s),
    )


class DrainingServer(HTTPServer):
    """The REST port's uvicorn, which when it stops answers the requests already in
    the port's queue too: closing a listening socket resets the connections the kernel
    queued on it but nobody accepted yet."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # A second descriptor keeps the port's queue while uvicorn closes its own.
        kept = [s.dup() for s in sockets or []]
        try:
            for server in self.servers:
                server.close()
            for s in sockets or []:
                s.close()
            if await self._adopt(kept):
                await asyncio.sleep(ADOPT_READ_S)  # they read what their clients sent
                await self._adopt(kept)
        finally:
            for s in kept:
                s.close()
        await super().shutdown()

    async def _adopt(self, listening: list[socket.socket]) -> int:
        loop = asyncio.get_running_loop()
        # As uvicorn makes the protocol of each connection it accepts.
        protocol = partial(  # type: ignore[call-arg]
            self.config.http_protocol_class,
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        adopted = 0
        for sock in listening:
            sock.setblocking(False)
            while True:
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    logger.warning("a queued connection could not be taken: %s", e)
                    break
                await loop.connect_accepted_socket(protocol, conn)  # type: ignore[arg-type]
                adopted += 1
        return adopted
