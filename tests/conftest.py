from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.protoshim import share_v2_protos

share_v2_protos()  # before anything imports MLServer

from tests.support.server import REPO, ServerProcess, running  # noqa: E402

pytest_plugins = ["tests.support.fixtures"]


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    # Lets fixtures see whether the test failed, to print a server's log.
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def print_log_on_failure(request: pytest.FixtureRequest, server: ServerProcess) -> None:
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n----- log of modelyard serve {server.directory} -----\n{server.log()}")


@pytest.fixture(scope="session")
def repo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`modelyard serve` on the repository's own model-settings/, shared by the session."""
    log = tmp_path_factory.mktemp("repo-server") / "serve.log"
    with running(ServerProcess(REPO / "model-settings", log, extra_args=["--no-watch"])) as server:
        yield server


@pytest.fixture
def serve_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    """Start `modelyard serve` on a directory; every server is stopped after the test."""
    servers: list[ServerProcess] = []

    def start(directory: Path, *args: str, ready: bool = True, **env: str) -> ServerProcess:
        server = ServerProcess(
            directory, tmp_path / f"serve-{len(servers)}.log", extra_args=args, env=env
        ).start()
        servers.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in servers:
        print_log_on_failure(request, server)
        server.stop()
