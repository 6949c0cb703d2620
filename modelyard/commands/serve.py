from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from modelyard.logs import configure_logging
from modelyard.serving.auth import ADMIN_TOKEN_ENV, Auth, AuthError, AuthOptions
from modelyard.serving.limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_INFLIGHT_MB,
    DEFAULT_SHUTDOWN_GRACE_S,
)
from modelyard.serving.listeners import PortInUse, check_free
from modelyard.serving.processes import auto_processes, process_index, supervise

EXIT_PORT_IN_USE = 2


@click.command()
@click.argument(
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default="model-settings",
    required=False,
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--http-port", default=8080, show_default=True, help="V2 REST port.")
@click.option("--grpc-port", default=8081, show_default=True, help="V2 gRPC port.")
@click.option("--metrics-port", default=8082, show_default=True, help="Prometheus port.")
@click.option(
    "--workers",
    default=0,
    show_default=True,
    help="Inference worker processes; 0 answers in the server process, fastest for light models.",
)
@click.option(
    "--rollout-candidate-url",
    "rollout_candidate_urls",
    multiple=True,
    metavar="NAME=URL",
    help="Compare model NAME with the candidate served at URL (another server's V2 REST "
    "endpoint, e.g. http://iris-candidate.default.svc:8080), as the declaration's rollout "
    "says (shadow or canary). Repeatable.",
)
@click.option(
    "--max-message-mb",
    default=64,
    show_default=True,
    envvar="MODELYARD_MAX_MESSAGE_MB",
    help="Largest request or response, over REST and gRPC alike.",
)
@click.option(
    "--max-inflight-mb",
    default=DEFAULT_MAX_INFLIGHT_MB,
    show_default=True,
    type=click.IntRange(min=1),
    envvar="MODELYARD_MAX_INFLIGHT_MB",
    help="Request bodies one server process takes at once, REST and gRPC together; a "
    "request beyond it gets 429 (Retry-After) / RESOURCE_EXHAUSTED. A request alone is "
    "always taken.",
)
@click.option(
    "--max-metadata-kb",
    default=16,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Largest gRPC metadata (headers) of one call; a call over it is refused.",
)
@click.option(
    "--header-timeout-s",
    default=DEFAULT_HEADER_TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="REST: time a client has to send a request's headers (408 after it).",
)
@click.option(
    "--body-timeout-s",
    default=DEFAULT_BODY_TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="REST: time a client has to send a request's whole body (408 after it).",
)
@click.option(
    "--idle-timeout-s",
    default=DEFAULT_IDLE_TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(min=1),
    help="REST: time an idle keep-alive connection stays open.",
)
@click.option(
    "--shutdown-grace-s",
    default=DEFAULT_SHUTDOWN_GRACE_S,
    show_default=True,
    type=click.FloatRange(min=0),
    help="On SIGTERM, time the requests received have to be answered before the "
    "process exits anyway.",
)
@click.option(
    "--processes",
    default="auto",
    show_default=True,
    help="Server processes sharing the ports; auto is one per available core (at most 4).",
)
@click.option(
    "--no-pin",
    is_flag=True,
    help="Let the kernel place server processes; by default, when they are one per core "
    "of every core available, each keeps to its own.",
)
@click.option("--no-watch", is_flag=True, help="Load the folders once; do not follow changes.")
@click.option(
    "--watch-registry",
    is_flag=True,
    help="Poll MLFLOW_TRACKING_URI for each model named by a models:/ alias, stage or "
    "latest, and load the new version through the same swap when it moves. Without it, "
    "the version resolved at load stays pinned, across restarts too.",
)
@click.option(
    "--registry-poll-s",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds between two polls of the registry (with --watch-registry).",
)
@click.option(
    "--admin-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File of the admin token that the repository API (load, unload, index) needs "
    f"as 'Authorization: Bearer <token>'; or set {ADMIN_TOKEN_ENV}. Without either, "
    "the repository API is refused.",
)
@click.option(
    "--inference-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File of the tokens (one a line) that inference, REST, gRPC and metrics, needs "
    "as 'Authorization: Bearer <token>'. Health probes stay open.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM certificate: REST, gRPC and metrics over TLS (with --tls-key).",
)
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="PEM key.")
@click.option(
    "--tls-client-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM CA: inference needs a client certificate signed by it (mutual TLS).",
)
@click.option("--debug", is_flag=True, help="Access logs and debug logging.")
def serve(
    directory: Path,
    host: str,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    workers: int,
    max_message_mb: int,
    max_inflight_mb: int,
    max_metadata_kb: int,
    header_timeout_s: float,
    body_timeout_s: float,
    idle_timeout_s: float,
    shutdown_grace_s: float,
    processes: str,
    no_pin: bool,
    no_watch: bool,
    watch_registry: bool,
    registry_poll_s: float,
    debug: bool,
    admin_token_file: Path | None,
    inference_token_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    rollout_candidate_urls: tuple[str, ...],
) -> None:
    """Serve every model folder in DIRECTORY (default: model-settings/) over V2 REST and gRPC.

    The directory is watched: a folder dropped in is loaded, a changed one is
    swapped in once it loads, a removed one is unloaded.
    """
    if not directory.is_dir():
        raise click.BadParameter(
            f"{directory} is not a directory; create it or name the folder of your models",
            param_hint="DIRECTORY",
        )
    if process_index() is None:  # the server itself, not one of its processes
        ports = {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port}
        try:
            check_free(host, ports)
        except PortInUse as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(EXIT_PORT_IN_USE)

    auth = AuthOptions(
        *(p.resolve() if p is not None else None
          for p in (admin_token_file, inference_token_file, tls_cert, tls_key, tls_client_ca))
    )  # fmt: skip
    try:
        Auth.load(auth)
    except AuthError as e:
        raise click.UsageError(str(e)) from None

    from modelyard.serving.rollouts import parse_remote

    try:
        rollout_candidates = parse_remote(rollout_candidate_urls)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--rollout-candidate-url") from None

    from mlserver.utils import install_uvloop_event_loop

    from modelyard.serving.server import ServeOptions, serve

    configure_logging(debug)
    count = auto_processes() if processes == "auto" else int(processes)
    if count > 1 and process_index() is None:
        child = [
            str(directory.resolve()), "--host", host, "--http-port", str(http_port),
            "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
            "--workers", str(workers), "--max-message-mb", str(max_message_mb),
            "--max-inflight-mb", str(max_inflight_mb),
            "--max-metadata-kb", str(max_metadata_kb),
            "--header-timeout-s", str(header_timeout_s), "--body-timeout-s", str(body_timeout_s),
            "--idle-timeout-s", str(idle_timeout_s), "--shutdown-grace-s", str(shutdown_grace_s),
            "--processes", str(count),
            *(["--no-watch"] if no_watch else []), *(["--debug"] if debug else []),
            *(["--watch-registry"] if watch_registry else []),
            "--registry-poll-s", str(registry_poll_s),
            *auth.args(),
            *(a for u in rollout_candidate_urls for a in ("--rollout-candidate-url", u)),
        ]  # fmt: skip
        sys.exit(supervise(child, count, pin=not no_pin, grace_s=shutdown_grace_s))
    opts = ServeOptions(
        directory=directory.resolve(),
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        workers=workers,
        max_message_mb=max_message_mb,
        max_inflight_mb=max_inflight_mb,
        max_metadata_kb=max_metadata_kb,
        header_timeout_s=header_timeout_s,
        body_timeout_s=body_timeout_s,
        idle_timeout_s=idle_timeout_s,
        shutdown_grace_s=shutdown_grace_s,
        watch=not no_watch,
        watch_registry=watch_registry,
        registry_poll_s=registry_poll_s,
        debug=debug,
        auth=auth,
        rollout_candidates=rollout_candidates,
    )
    install_uvloop_event_loop()
    asyncio.run(serve(opts))
