"""V2 over REST: MLServer's FastAPI app for every path, with inference answered first.

MLServer's app sends every request through six middlewares (gzip, CORS, Prometheus,
exception handling...) and FastAPI's dependency resolution; for a light model that
costs more than the prediction. `RestInfer` answers `POST .../infer` itself with the
same data plane, the same request/response models and the same JSON encoder, and
hands every other path to the app, whose endpoints call the same data plane.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from mlserver.errors import MLServerError
from mlserver.handlers import get_custom_handlers
from mlserver.model import MLModel
from mlserver.rest.app import create_app
from mlserver.rest.responses import ServerSentEvent
from mlserver.rest.utils import matches
from mlserver.settings import Settings
from mlserver.types import InferenceRequest
from mlserver.utils import extract_headers, insert_headers

from modelyard.serving import metrics
from modelyard.serving.binary import HEADER, binary_outputs, encode_response
from modelyard.serving.dataplane import DataPlane, unexpected
from modelyard.serving.docs import add_docs_routes
from modelyard.serving.heavy import Decoder, Undecodable, decode
from modelyard.serving.model_config import add_config_routes
from modelyard.serving.repository import Repository

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEALTH_PATHS = {"/v2/health/live": "live", "/v2/health/ready": "ready"}
INFER_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
STREAM_PATH = re.compile(
    r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/(?:infer|generate)_stream"
)
JSON_HEADERS = [(b"content-type", b"application/json")]


def rest_app(
    settings: Settings,
    data_plane: DataPlane,
    repository: Repository,
    extra_routes: dict[str, Callable[[], Awaitable[Any]]],
) -> FastAPI:
    """MLServer's V2 app over this server's data plane and repository, with
    ``extra_routes`` (path -> handler answering JSON) beside its own."""
    # MLServer's endpoints call the data plane and repository by the names they know.
    app = create_app(settings, data_plane=data_plane, model_repository_handlers=repository)  # type: ignore[arg-type]
    for path, handler in extra_routes.items():
        app.add_api_route(path, handler, methods=["GET"], response_class=ORJSONResponse)
    add_config_routes(app, data_plane)
    add_docs_routes(app, data_plane)
    return app


async def add_custom_handlers(app: FastAPI, model: MLModel) -> MLModel:
    """The model's own REST endpoints (MLServer's ``@custom_handler``)."""
    for handler, method in get_custom_handlers(model):
        app.add_api_route(handler.rest_path, method, methods=[handler.rest_method])
    return model


async def remove_custom_handlers(app: FastAPI, model: MLModel) -> MLModel:
    handlers = get_custom_handlers(model)
    app.router.routes[:] = [
        route
        for route in app.router.routes
        if not any(matches(route, h, m) for h, m in handlers)  # type: ignore[arg-type]
    ]
    return model


class RestInfer:
    """The REST port's ASGI app: ``POST .../infer`` here, the rest to ``app``."""

    def __init__(self, app: ASGIApp, data_plane: DataPlane, decoder: Decoder | None = None):
        self.app = app
        self.data_plane = data_plane
        self.decoder = decoder or Decoder()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                await self.infer(scope, receive, send, match["name"], match["version"])
                return
            match = STREAM_PATH.fullmatch(scope["path"])
            if match is not None:
                await self.stream(scope, receive, send, match["name"], match["version"])
                return
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] in HEALTH_PATHS:
            await self.health(HEALTH_PATHS[scope["path"]], send)
            return
        await self.app(scope, receive, send)

    async def health(self, what: str, send: Send) -> None:
        """The Open Inference Protocol's health bodies: ``{"live": true}``,
        ``{"ready": true}``; 200 when true, 400 when false, as MLServer answers."""
        ok = await (self.data_plane.live() if what == "live" else self.data_plane.ready())
        body = orjson.dumps({what: ok})
        await send(
            {
                "type": "http.response.start",
                "status": 200 if ok else 400,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def infer(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None
    ) -> None:
        start = time.perf_counter()
        status, headers, body = await self._answer(scope, receive, name, version)
        label = name if self.data_plane.models.find(name) is not None else metrics.UNKNOWN
        metrics.REST_REQUESTS.labels(model=label, code=str(status)).inc()
        metrics.REST_DURATION.labels(model=label).observe(time.perf_counter() - start)
        if not any(k == b"content-type" for k, _ in headers):
            headers = [*JSON_HEADERS, *headers]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def stream(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None
    ) -> None:
        """``.../infer_stream`` and ``.../generate_stream``: MLServer's server-sent events,
        with a bad request or an unknown model answered with its status (as ``infer``
        answers it) before any event is sent."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            payload = decode(b"".join(chunks), headers.get(HEADER))
            insert_headers(payload, headers)
            events = self.data_plane.infer_stream(_one(payload), name, version)
            first = await anext(events, None)
        except Undecodable as e:
            await _send(send, e.status, JSON_HEADERS, _error(e.message))
            return
        except MLServerError as e:
            await _send(send, e.status_code, JSON_HEADERS, _error(str(e)))
            return
        start = {"type": "http.response.start", "status": 200,
                 "headers": [(b"content-type", b"text/event-stream")]}  # fmt: skip
        await send(start)
        try:
            while first is not None:
                event = ServerSentEvent(first).encode()
                await send({"type": "http.response.body", "body": event, "more_body": True})
                first = await anext(events, None)
        except MLServerError as e:  # the status is sent: the stream ends here
            logger.warning("model '%s': stream ended: %s", name, e)
        await send({"type": "http.response.body", "body": b""})

    async def _answer(
        self, scope: Scope, receive: Receive, name: str, version: str | None
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        request_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        raw = await self._body(receive)
        try:
            header = request_headers.get(HEADER)
            if len(raw) < self.decoder.heavy_bytes:  # most: no coroutine more per call
                payload = decode(raw, header)
            else:
                payload = await self.decoder.decode(raw, header)
        except Undecodable as e:
            return e.status, [], _error(e.message)
        binary = binary_outputs(payload)
        insert_headers(payload, request_headers)
        try:
            response = await self.data_plane.infer(payload, name, version)
        except MLServerError as e:
            return e.status_code, [], _error(str(e))
        except Exception as e:
            return 500, [], _error(str(unexpected(name, payload.id, e)))
        extra = extract_headers(response) or {}
        body, headers = encode_response(response, binary)
        return (
            200,
            [
                *headers,
                *((k.encode("latin-1"), str(v).encode("latin-1")) for k, v in extra.items()),
            ],
            body,
        )

    async def _body(self, receive: Receive) -> bytes:
        """The body, already bounded and gunzipped by `limits.BodyLimits`."""
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _one(payload: InferenceRequest) -> AsyncIterator[InferenceRequest]:
    yield payload


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    length = (b"content-length", str(len(body)).encode())
    await send({"type": "http.response.start", "status": status, "headers": [*headers, length]})
    await send({"type": "http.response.body", "body": body})


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})
