"""NVIDIA perf_analyzer in its default mode (concurrency 1, synchronous requests of
random data shaped by the model's configuration) against a real `modelyard serve`."""

from __future__ import annotations

import pytest

from tests.support.perf_analyzer import PerfAnalyzerFailed, run_perf_analyzer
from tests.support.server import ServerProcess


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_completes_without_errors(protocol: str, repo_server: ServerProcess) -> None:
    url = repo_server.http_url if protocol == "http" else repo_server.grpc_url
    result = run_perf_analyzer("iris", url, protocol, measurement_ms=2000)
    # perf_analyzer stops at the first request that fails; here none did.
    assert "error" not in result.output.lower(), result.output
    assert result.concurrency == 1
    assert result.throughput > 0 and result.p50_us > 0, result.output


def test_perf_analyzer_reports_an_unknown_model(repo_server: ServerProcess) -> None:
    """The other side of the check above: a failure is reported, not hidden."""
    with pytest.raises(PerfAnalyzerFailed, match="nope"):
        run_perf_analyzer("nope", repo_server.http_url, "http", measurement_ms=1000)
