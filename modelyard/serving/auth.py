"""Who may call the server: the admin token of the repository API, the tokens or client
certificates of inference, and the TLS of the ports.

- The repository API (index, load, unload over REST and gRPC) can take a model out of
  service, so it is refused (403 / PERMISSION_DENIED) unless an admin token is set
  (``--admin-token-file`` or ``MODELYARD_ADMIN_TOKEN``); with one, a call without
  ``Authorization: Bearer <token>`` gets 401 / UNAUTHENTICATED.
- Inference (every other path or method, the metrics port included) is open unless
  ``--inference-token-file`` (one allowed token a line) or ``--tls-client-ca`` (a client
  certificate signed by that CA) is given; with both, a call needs both.
- The health probes (REST ``/v2/health/*`` and ``/v2/models/{name}/ready``, gRPC
  ``grpc.health.v1.Health``) stay open: the kubelet sends neither a token nor a
  certificate.

Tokens are compared in constant time, against every allowed token. With nothing
configured, inference pays nothing: no check is installed on its path.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import orjson
import uvicorn
from grpc import aio
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

ADMIN_TOKEN_ENV = "MODELYARD_ADMIN_TOKEN"
BEARER = "bearer "

REST_REPOSITORY_PREFIX = "/v2/repository/"
# A rollout's promote and abort (`rollouts.py`) take the admin token too.
REST_ROLLOUTS_PREFIX = "/modelyard/rollouts/"
REST_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
# A model's readiness is a probe too (a Model's pods are ready when its model is), open
# as gRPC's Health is for each model.
REST_MODEL_READY = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/ready")
GRPC_REPOSITORY_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/RepositoryIndex",
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        "/inference.GRPCInferenceService/RepositoryModelUnload",
        "/inference.model_repository.ModelRepositoryService/RepositoryIndex",
        "/inference.model_repository.ModelRepositoryService/RepositoryModelLoad",
        "/inference.model_repository.ModelRepositoryService/RepositoryModelUnload",
    }
)
GRPC_OPEN_PREFIX = "/grpc.health.v1.Health/"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

REPOSITORY_DISABLED = (
    "the repository API (load, unload, index) is disabled: start the server with "
    f"--admin-token-file FILE or {ADMIN_TOKEN_ENV} set, and send "
    "'Authorization: Bearer <token>'"
)
ADMIN_TOKEN_NEEDED = (
    "the repository API needs the admin token: send 'Authorization: Bearer <token>' "
    "with the token of --admin-token-file or " + ADMIN_TOKEN_ENV
)
INFERENCE_TOKEN_NEEDED = (
    "this server needs a token: send 'Authorization: Bearer <token>' with one of the "
    "tokens of its --inference-token-file"
)
CLIENT_CERT_NEEDED = (
    "this server needs a client certificate signed by its --tls-client-ca: connect "
    "over TLS with one"
)


class AuthError(Exception):
    """A token file or TLS file that cannot be used: the server does not start."""


@dataclass(frozen=True)
class AuthOptions:
    """The serve flags of this module (files are read when the server starts)."""

    admin_token_file: Path | None = None
    inference_token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None

    def args(self) -> list[str]:
        """The same options as `modelyard serve` flags (for the server's processes)."""
        return _flags(
            ("--admin-token-file", self.admin_token_file),
            ("--inference-token-file", self.inference_token_file),
            *self._tls(),
        )

    def front_args(self) -> list[str]:
        """The Go front end's TLS flags (tokens are checked by the process)."""
        return _flags(*self._tls())

    def _tls(self) -> list[tuple[str, Path | None]]:
        return [
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-client-ca", self.tls_client_ca),
        ]


def _flags(*pairs: tuple[str, Path | None]) -> list[str]:
    out: list[str] = []
    for flag, value in pairs:
        if value is not None:
            out += [flag, str(value)]
    return out


class Tokens:
    """A set of allowed bearer tokens, matched in constant time."""

    def __init__(self, tokens: Iterable[str]):
        self._tokens = [t.encode() for t in tokens]

    def __len__(self) -> int:
        return len(self._tokens)

    def match(self, authorization: str | bytes | None) -> bool:
        """Whether an ``Authorization`` value is ``Bearer <one of the tokens>``."""
        if authorization is None:
            return False
        if isinstance(authorization, str):
            authorization = authorization.encode("latin-1", "replace")
        if authorization[:7].lower() != BEARER.encode():
            return False
        given = authorization[7:].strip()
        found = False
        for token in self._tokens:  # every token compared: the time says nothing
            found |= hmac.compare_digest(token, given)
        return found


def read_tokens(path: Path, flag: str) -> Tokens:
    """One token a line; blank lines and lines starting with ``#`` are skipped."""
    try:
        text = path.read_text()
    except OSError as e:
        raise AuthError(f"{flag} {path}: cannot read it ({e.strerror})") from None
    tokens = [line.strip() for line in text.splitlines()]
    tokens = [t for t in tokens if t and not t.startswith("#")]
    if not tokens:
        raise AuthError(f"{flag} {path}: no token in it; write one token a line")
    if any(any(c.isspace() for c in t) for t in tokens):
        raise AuthError(f"{flag} {path}: a token holds a space; write one token a line")
    return Tokens(tokens)


class Denied(NamedTuple):
    status: int  # 401 or 403
    message: str

    @property
    def grpc_code(self) -> grpc.StatusCode:
        if self.status == 403:
            return grpc.StatusCode.PERMISSION_DENIED
        return grpc.StatusCode.UNAUTHENTICATED


class Auth:
    """The checks of one server process, built once from `AuthOptions`."""

    def __init__(
        self,
        admin: Tokens | None = None,
        inference: Tokens | None = None,
        client_ca: bool = False,
    ):
        self.admin = admin
        self.inference = inference
        self.client_ca = client_ca

    @classmethod
    def load(cls, opts: AuthOptions, environ: MutableMapping[str, str] = os.environ) -> Auth:
        admin = None
        if opts.admin_token_file is not None:
            admin = read_tokens(opts.admin_token_file, "--admin-token-file")
        elif environ.get(ADMIN_TOKEN_ENV, "").strip():
            admin = Tokens([environ[ADMIN_TOKEN_ENV].strip()])
        inference = None
        if opts.inference_token_file is not None:
            inference = read_tokens(opts.inference_token_file, "--inference-token-file")
        if (opts.tls_cert is None) != (opts.tls_key is None):
            raise AuthError("--tls-cert and --tls-key go together: give both, or neither")
        if opts.tls_client_ca is not None and opts.tls_cert is None:
            raise AuthError("--tls-client-ca needs TLS: give --tls-cert and --tls-key too")
        for flag, path in (
            ("--tls-cert", opts.tls_cert),
            ("--tls-key", opts.tls_key),
            ("--tls-client-ca", opts.tls_client_ca),
        ):
            if path is not None and not path.is_file():
                raise AuthError(f"{flag} {path}: no such file")
        if opts.tls_cert is not None:
            server_tls_context(opts)  # a pair that does not load fails now, not per call
        return cls(admin, inference, opts.tls_client_ca is not None)

    @property
    def inference_required(self) -> bool:
        """Whether inference calls are checked at all (else nothing is installed)."""
        return self.inference is not None or self.client_ca

    def check_admin(self, authorization: str | bytes | None) -> Denied | None:
        if self.admin is None:
            return Denied(403, REPOSITORY_DISABLED)
        if not self.admin.match(authorization):
            return Denied(401, ADMIN_TOKEN_NEEDED)
        return None

    def check_inference(
        self, authorization: str | bytes | None, client_verified: bool
    ) -> Denied | None:
        if self.client_ca and not client_verified:
            return Denied(401, CLIENT_CERT_NEEDED)
        if self.inference is not None and not self.inference.match(authorization):
            return Denied(401, INFERENCE_TOKEN_NEEDED)
        return None

    # -- REST ----------------------------------------------------------------------------
    def rest_check(self, scope: Scope) -> Denied | None:
        path: str = scope["path"]
        if path in REST_OPEN_PATHS or (path[-6:] == "/ready" and REST_MODEL_READY.fullmatch(path)):
            return None
        authorization = _header(scope, b"authorization")
        if path.startswith(REST_REPOSITORY_PREFIX) or (
            path.startswith(REST_ROLLOUTS_PREFIX) and scope["method"] == "POST"
        ):
            return self.check_admin(authorization)
        if not self.inference_required:
            return None
        return self.check_inference(authorization, _client_verified(scope))

    # -- gRPC ----------------------------------------------------------------------------
    def grpc_check(
        self,
        method: str,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        client_verified: bool = True,
    ) -> Denied | None:
        """The check of one gRPC call. ``client_verified``: the Go front end has already
        refused a call without a client certificate (and Python's own gRPC server asks
        for one at the handshake when a client CA is set)."""
        if method.startswith(GRPC_OPEN_PREFIX):
            return None
        authorization = None
        for key, value in metadata or ():
            if key == "authorization":
                authorization = value
                break
        if method in GRPC_REPOSITORY_METHODS:
            return self.check_admin(authorization)
        if not self.inference_required:
            return None
        return self.check_inference(authorization, client_verified)


# -- ASGI --------------------------------------------------------------------------------
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _client_verified(scope: Scope) -> bool:
    """Whether the connection carried a client certificate the TLS layer verified (the
    ASGI TLS extension, filled in by `TLSHttpProtocol`)."""
    tls = scope.get("extensions", {}).get("tls")
    return bool(tls and tls.get("client_cert_chain"))


async def send_denied(denied: Denied, send: Send) -> None:
    body = orjson.dumps({"error": denied.message})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if denied.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="modelyard"'))
    await send({"type": "http.response.start", "status": denied.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guarded:
    """An ASGI app behind `Auth.rest_check` (HTTP only; lifespan passes)."""

    def __init__(self, app: ASGIApp, auth: Auth):
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            denied = self.auth.rest_check(scope)
            if denied is not None:
                await send_denied(denied, send)
                return
        await self.app(scope, receive, send)


# -- gRPC --------------------------------------------------------------------------------
class GRPCAuthInterceptor(aio.ServerInterceptor):
    """`Auth.grpc_check` for Python's gRPC server: a call refused is answered by a
    handler of the same kind that aborts with the check's status."""

    def __init__(self, auth: Auth):
        self.auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = details.method  # type: ignore[attr-defined]
        if method == MODEL_INFER:  # checked by the servicer, for the Go front end too
            return await continuation(details)
        denied = self.auth.grpc_check(method, details.invocation_metadata)  # type: ignore[attr-defined]
        handler = await continuation(details)
        if denied is None or handler is None:
            return handler
        return _refusing(handler, denied)


def _refusing(handler: grpc.RpcMethodHandler, denied: Denied) -> grpc.RpcMethodHandler:
    async def refuse(_request: Any, context: aio.ServicerContext) -> Any:
        await context.abort(denied.grpc_code, denied.message)

    streaming = (handler.request_streaming, handler.response_streaming)
    if streaming == (False, False):
        return grpc.unary_unary_rpc_method_handler(refuse)
    if streaming == (True, False):
        return grpc.stream_unary_rpc_method_handler(refuse)

    async def refuse_stream(_request: Any, context: aio.ServicerContext) -> Any:
        await context.abort(denied.grpc_code, denied.message)
        yield  # pragma: no cover - a generator, as the kind of handler requires

    if streaming == (False, True):
        return grpc.unary_stream_rpc_method_handler(refuse_stream)
    return grpc.stream_stream_rpc_method_handler(refuse_stream)


# -- TLS ---------------------------------------------------------------------------------
def server_tls_context(opts: AuthOptions) -> ssl.SSLContext:
    """The REST and metrics ports' TLS: the server's pair, and with a client CA,
    client certificates asked for and verified when sent (a probe sends none; each
    call is then checked by `Auth.check_inference`)."""
    assert opts.tls_cert is not None and opts.tls_key is not None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(opts.tls_cert, opts.tls_key)
        if opts.tls_client_ca is not None:
            context.load_verify_locations(cafile=str(opts.tls_client_ca))
            context.verify_mode = ssl.CERT_OPTIONAL
    except (ssl.SSLError, OSError) as e:
        raise AuthError(
            f"--tls-cert {opts.tls_cert} / --tls-key {opts.tls_key}"
            f"{f' / --tls-client-ca {opts.tls_client_ca}' if opts.tls_client_ca else ''}: "
            f"cannot be loaded ({e}); give a PEM certificate and its PEM private key"
        ) from None
    return context


def grpc_server_credentials(opts: AuthOptions) -> grpc.ServerCredentials:
    """Python's gRPC server's TLS (when the Go front end is not used): with a client CA,
    a client certificate is required at the handshake (gRPC's Python server cannot ask
    for one without requiring it)."""
    assert opts.tls_cert is not None and opts.tls_key is not None
    ca = opts.tls_client_ca.read_bytes() if opts.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(opts.tls_key.read_bytes(), opts.tls_cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


class TLSHttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, with the ASGI TLS extension's client certificate in
    each request's scope (uvicorn leaves it out), for `Auth.check_inference`."""

    _client_chain: list[str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self._client_chain = [ssl.DER_cert_to_PEM_cert(cert)] if cert else []

    def on_headers_complete(self) -> None:
        self.scope["extensions"] = {  # type: ignore[typeddict-unknown-key]
            **self.scope.get("extensions", {}),
            "tls": {"client_cert_chain": self._client_chain or []},
        }
        super().on_headers_complete()


def uvicorn_tls(opts: AuthOptions) -> dict[str, Any]:
    """The `uvicorn.Config` arguments of an HTTP port with these options' TLS."""
    if opts.tls_cert is None:
        return {}
    context = server_tls_context(opts)
    out: dict[str, Any] = {"ssl_context_factory": lambda _config, _default: context}
    if opts.tls_client_ca is not None:
        out["http"] = TLSHttpProtocol
    return out


def secure_http(config: uvicorn.Config, auth: Auth, opts: AuthOptions) -> uvicorn.Config:
    """An HTTP port's config with these options' checks (when inference is checked)
    and TLS (when a pair is given); the same config when neither."""
    if auth.inference_required:
        config.app = Guarded(config.app, auth)  # type: ignore[arg-type]
    for name, value in uvicorn_tls(opts).items():
        setattr(config, name, value)
    return config
