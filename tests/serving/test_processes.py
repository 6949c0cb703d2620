"""Several server processes behind the same ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import requests

from modelyard.serving.processes import _keep_to, process_cores
from modelyard.serving.siblings import PROMETHEUS_DIR_ENV
from tests.serving.test_live_registry import SETOSA, wait_for, write_iris, write_slow
from tests.support.server import ServerProcess

BODY = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4], "data": SETOSA}]}


def status_from_fresh_connection(server: ServerProcess) -> dict:
    # A new connection each time, so the kernel may pick any process.
    return requests.get(server.base + "/modelyard/status", timeout=5,
                        headers={"Connection": "close"}).json()  # fmt: skip


def threads_cores(pid: int) -> set[frozenset[int]]:
    """The distinct CPU affinities of every thread of process `pid`."""
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


def pids_by_process(server: ServerProcess) -> dict[int, int]:
    pids: dict[int, int] = {}

    def both_seen() -> bool:
        status = status_from_fresh_connection(server)
        pids[status["process"]] = status["pid"]
        return len(pids) == 2

    wait_for(both_seen, what="both processes to answer")
    return pids


def test_processes_share_ports_metrics_and_readiness(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    write_slow(models / "slow", delay=3.0)
    server = serve_dir(models, "--processes", "2", "--no-pin", ready=False)
    server.wait_ready(path="/v2/health/live")

    # Readiness is the server's, not one process's: no process says ready while
    # any of them is still loading the slow model.
    wait_for(lambda: requests.get(server.base + "/v2/models/iris/ready", timeout=5).ok)
    for _ in range(10):
        assert requests.get(server.base + "/v2/health/ready", timeout=5,
                            headers={"Connection": "close"}).status_code != 200  # fmt: skip
    server.wait_ready()

    seen = {status_from_fresh_connection(server)["process"] for _ in range(40)}
    assert seen == {0, 1}
    # --no-pin: the kernel may run every process on every core.
    for pid in pids_by_process(server).values():
        assert threads_cores(pid) == {frozenset(os.sched_getaffinity(0))}

    for _ in range(30):
        r = requests.post(f"{server.base}/v2/models/iris/infer", json=BODY, timeout=5,
                          headers={"Connection": "close"})  # fmt: skip
        assert r.status_code == 200
    metrics = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).text
    series = 'modelyard_rest_infer_requests_total{code="200",model="iris"}'
    counted = [line for line in metrics.splitlines() if line.startswith(series)]
    assert counted and float(counted[0].split()[-1]) == 30.0


def test_a_metrics_file_a_process_has_only_just_created_does_not_fail_the_scrape(
    serve_dir, tmp_path: Path
) -> None:
    """A process creates its metrics file empty and sizes it a moment later; a scrape
    that lists the folder in between still answers, with every count."""
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    server = serve_dir(models, "--processes", "2", "--no-pin")
    pid = next(iter(pids_by_process(server).values()))
    environ = dict(
        entry.split("=", 1)
        for entry in Path(f"/proc/{pid}/environ").read_text().split("\0")
        if "=" in entry
    )
    # Named as prometheus_client names a counter file of a process still starting.
    (Path(environ[PROMETHEUS_DIR_ENV]) / "counter_999999.db").touch()
    for _ in range(5):
        r = requests.post(f"{server.base}/v2/models/iris/infer", json=BODY, timeout=5)
        assert r.status_code == 200
    scraped = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5)
    assert scraped.status_code == 200, scraped.text
    series = 'modelyard_rest_infer_requests_total{code="200",model="iris"}'
    counted = [line for line in scraped.text.splitlines() if line.startswith(series)]
    assert counted and float(counted[0].split()[-1]) == 5.0


def test_a_process_that_dies_is_replaced(serve_dir, tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_iris(models / "iris", "1")
    server = serve_dir(models, "--processes", "2")
    # The server sees the cores and CPU quota this test does: on a machine of two
    # cores, each process keeps to one of them, with every thread it started.
    cores = process_cores(2)
    expected = (
        [{frozenset({c})} for c in cores] if cores else [{frozenset(os.sched_getaffinity(0))}] * 2
    )
    pids = pids_by_process(server)
    assert [threads_cores(pids[i]) for i in (0, 1)] == expected
    os.kill(pids[1], signal.SIGKILL)

    def replaced() -> bool:
        try:
            s = status_from_fresh_connection(server)
        except requests.ConnectionError:
            # Connections queued on the killed process are reset: that is the crash.
            return False
        if s["process"] == 1 and s["pid"] != pids[1]:
            pids[1] = s["pid"]
            return True
        return False

    wait_for(replaced, timeout=60, what="process 1 to be restarted")
    server.wait_ready()
    assert threads_cores(pids[1]) == expected[1]  # the replacement keeps the same core
    r = requests.post(f"{server.base}/v2/models/iris/infer", json=BODY, timeout=5)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [0]
    assert "restarting" in server.log()


def test_a_core_gone_since_start_leaves_the_process_unpinned() -> None:
    """A restarted process whose core has gone (hotplug, a changed cpuset) still starts."""
    gone = max(os.sched_getaffinity(0)) + 1000
    shown = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
        preexec_fn=partial(_keep_to, gone), capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert shown.strip() == str(sorted(os.sched_getaffinity(0)))
