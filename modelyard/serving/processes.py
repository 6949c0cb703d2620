"""Several server processes on the same ports, one per available core.

A Python server answers on one core, and for a light model the HTTP/gRPC handling,
not the prediction, is the work. Each process here is a whole `modelyard serve`
(its own models, registry and watcher) listening with SO_REUSEPORT once it serves,
so the kernel spreads connections across the processes that can answer them. They
share a state folder (`siblings.py`: readiness, served versions, repository calls;
Prometheus' files, aggregated and served by the first). The supervisor restarts a
process that dies.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from modelyard.serving.siblings import (
    COUNT_ENV,
    INDEX_ENV,
    PROMETHEUS_DIR_ENV,
    STATE_DIR_ENV,
    forget,
)

logger = logging.getLogger(__name__)

# Set when each process keeps to one core: all of them, for the helpers it starts
# (the gRPC front end) that serve it from any core.
CORES_ENV = "MODELYARD_CORES"
# Light models answer fastest with one process per core; beyond this many the
# memory of one copy of every model per process outweighs the gain.
MAX_AUTO_PROCESSES = 4


def available_cpus() -> int:
    """Cores this process may use: its CPU affinity, bounded by a cgroup v2 CPU quota
    (a container's `resources.limits.cpu`), which `os.cpu_count()` ignores."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def auto_processes() -> int:
    return max(1, min(available_cpus(), MAX_AUTO_PROCESSES))


def process_cores(count: int) -> list[int] | None:
    """The core each of `count` server processes keeps to, when they are one per core
    of every core the server may use (a machine of its own, or a Kubernetes pod given
    whole cores by the static CPU manager); None when the cores are shared with other
    work or capped by a CPU quota, where the kernel places them better.

    A process kept to one core keeps its caches warm: its event loop and the gRPC
    core's threads hand each request to one another on that core, instead of being
    moved across cores as the client and other threads wake.
    """
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if count < 2 or count != len(cores) or available_cpus() != len(cores):
        return None
    return cores


def process_index() -> int | None:
    """This process's index when it is one of several, else None."""
    value = os.environ.get(INDEX_ENV)
    return int(value) if value is not None and int(os.environ.get(COUNT_ENV, "1")) > 1 else None


# How long past their grace period the supervisor waits for stopping processes
# before it kills them.
STOP_MARGIN_S = 5.0


def supervise(child_args: list[str], count: int, pin: bool = True, grace_s: float = 20.0) -> int:
    """Run `count` copies of `modelyard serve` with `child_args` until told to stop,
    each kept to a core of its own when `pin` and `process_cores` allow; once told,
    each has `grace_s` seconds (its ``--shutdown-grace-s``) to drain."""
    state_dir = Path(tempfile.mkdtemp(prefix="modelyard-serve-"))
    metrics_dir = state_dir / "metrics"
    metrics_dir.mkdir()
    stopping = False
    cores = process_cores(count) if pin else None

    # Each process answers on its own core: native thread pools (OpenMP in XGBoost
    # and scikit-learn, PyTorch) sized for the whole machine would fight each other.
    threads = str(max(1, available_cpus() // count))

    def start(index: int) -> subprocess.Popen:
        env = {"OMP_NUM_THREADS": threads, **os.environ, INDEX_ENV: str(index),
               COUNT_ENV: str(count), STATE_DIR_ENV: str(state_dir),
               PROMETHEUS_DIR_ENV: str(metrics_dir)}  # fmt: skip
        if cores:
            env[CORES_ENV] = ",".join(map(str, cores))
        # Set before exec, so every thread the process starts inherits it.
        affinity = partial(_keep_to, cores[index]) if cores else None
        return subprocess.Popen(
            [sys.executable, "-m", "modelyard", "serve", *child_args], env=env, preexec_fn=affinity
        )

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    children = [start(i) for i in range(count)]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, stop)
    logger.info("serving with %d processes (pids %s%s)", count, [c.pid for c in children],
                f", one per core {cores}" if cores else "")  # fmt: skip
    restarts: list[float] = []
    try:
        while not stopping:
            time.sleep(0.2)
            for i, child in enumerate(children):
                code = child.poll()
                if code is None or stopping:
                    continue
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > 5 * count:
                    logger.error("server processes keep exiting (last code %s); giving up", code)
                    stop(signal.SIGTERM, None)
                    return 1
                logger.error("server process %d (pid %d) exited with %s; restarting",
                             i, child.pid, code)  # fmt: skip
                _forget_process_metrics(str(metrics_dir), child.pid)
                forget(state_dir, i)
                children[i] = start(i)
        deadline = time.monotonic() + grace_s + STOP_MARGIN_S
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        return 0
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def _keep_to(*cores: int) -> None:
    # A core gone since the server started (hotplug, a changed cpuset): serve unpinned.
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cores)


def unpinned() -> Callable[[], None] | None:
    """For a helper process started by a server process kept to one core: run it on
    all the server's cores instead (before it starts, so all its threads do)."""
    cores = os.environ.get(CORES_ENV)
    return partial(_keep_to, *map(int, cores.split(","))) if cores else None


def _forget_process_metrics(metrics_dir: str, pid: int) -> None:
    from prometheus_client import multiprocess

    os.environ.setdefault(PROMETHEUS_DIR_ENV, metrics_dir)
    multiprocess.mark_process_dead(pid, metrics_dir)
