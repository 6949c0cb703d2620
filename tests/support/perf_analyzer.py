"""NVIDIA perf_analyzer, the standard load generator of V2 servers, for tests and benchmarks.

PyPI's wheels need glibc 2.38; `scripts/perf_analyzer/install.sh` makes it run on
Debian 12 with Debian 13's C and C++ runtimes beside it, under the cache.
"""

from __future__ import annotations

import csv
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import REPO

VERSION = "2.60.0"
INSTALL_SCRIPT = REPO / "scripts" / "perf_analyzer" / "install.sh"


def install_dir() -> Path:
    default = Path.home() / ".cache" / "modelyard" / f"perf-analyzer-{VERSION}"
    return Path(os.environ.get("MODELYARD_PERF_ANALYZER", default))


def ensure_perf_analyzer() -> Path:
    """The perf_analyzer command, installed under the cache when missing."""
    command = install_dir() / "bin" / "perf_analyzer"
    if not command.exists():
        subprocess.run(["bash", str(INSTALL_SCRIPT), str(install_dir())], check=True)
    return command


@dataclass(frozen=True)
class PerfResult:
    """One perf_analyzer run: its figures at one concurrency, and what it printed."""

    concurrency: int
    throughput: float  # inferences per second
    p50_us: float
    p99_us: float
    output: str


class PerfAnalyzerFailed(RuntimeError):
    pass


def run_perf_analyzer(
    model: str,
    url: str,
    protocol: str = "http",
    concurrency: int = 1,
    batch_size: int = 1,
    measurement_ms: int = 5000,
    stable: bool = False,
    timeout: float = 300.0,
) -> PerfResult:
    """perf_analyzer on ``model`` at ``url`` (``host:port``) over ``protocol`` (``http``
    or ``grpc``), with its default inputs (random data shaped by the model's
    configuration). A request that fails stops perf_analyzer with an error, raised here.
    ``stable``: keep perf_analyzer's own stability check (measurements within 10% of
    each other); off, it reports its first measurements, as a loaded machine needs."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        argv = [
            str(ensure_perf_analyzer()),
            "-m", model, "-u", url, "-i", protocol,
            "-b", str(batch_size),
            "--concurrency-range", str(concurrency),
            "--measurement-interval", str(measurement_ms),
            "-f", str(report),
        ]  # fmt: skip
        if not stable:
            argv += ["--stability-percentage", "999"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        output = done.stdout + done.stderr
        if done.returncode != 0 or not report.exists():
            raise PerfAnalyzerFailed(f"perf_analyzer exited with {done.returncode}:\n{output}")
        with report.open() as f:
            row = next(csv.DictReader(f))
    return PerfResult(
        concurrency=int(row["Concurrency"]),
        throughput=float(row["Inferences/Second"]),
        p50_us=float(row["p50 latency"]),
        p99_us=float(row["p99 latency"]),
        output=output,
    )
