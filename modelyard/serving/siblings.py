"""What the processes of one server tell each other, through files in its state folder.

A server of several processes (`processes.py`) is one server to its clients: each
process publishes whether it serves and which model versions; a repository call
(load, unload) taken by one process is appended to a log every process follows, so
it acts on all of them, and a process that starts again later replays it. A server
of one process keeps all of this in memory.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INDEX_ENV = "MODELYARD_PROCESS_INDEX"
COUNT_ENV = "MODELYARD_PROCESSES"
STATE_DIR_ENV = "MODELYARD_STATE_DIR"
# Prometheus' files of every process, in the state folder (prometheus_client reads it).
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

ACTIONS_FILE = "repository.jsonl"
LOAD, UNLOAD = "load", "unload"
# A rollout's candidate served instead of its incumbent, or unloaded (`rollouts.py`).
PROMOTE, ABORT = "promote", "abort"


@dataclass(frozen=True)
class Action:
    """One repository call, numbered in the order the server took them."""

    generation: int
    verb: str  # LOAD, UNLOAD, PROMOTE or ABORT
    name: str


def process_file(state_dir: Path, index: int) -> Path:
    return state_dir / f"process-{index}.json"


def started_file(state_dir: Path, index: int) -> Path:
    return state_dir / f"started-{index}"


def forget(state_dir: Path, index: int) -> None:
    """A process has exited: it no longer serves (its restart publishes again)."""
    process_file(state_dir, index).unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Siblings:
    """This process's view of its server's processes."""

    def __init__(self, index: int | None, count: int, state_dir: Path | None):
        self.index = index
        self.count = count
        self.state_dir = state_dir
        self._published: dict[str, Any] | None = None
        self._actions: list[Action] = []  # a server of one process: in memory

    @classmethod
    def from_env(cls) -> Siblings:
        count = int(os.environ.get(COUNT_ENV, "1"))
        index = os.environ.get(INDEX_ENV)
        if index is None or count < 2:
            return cls(None, 1, None)
        return cls(int(index), count, Path(os.environ[STATE_DIR_ENV]))

    @property
    def solo(self) -> bool:
        return self.state_dir is None

    # -- what each process serves ----------------------------------------------------------
    def publish(
        self, ready: bool, versions: dict[str, str], applied: int, errors: dict[str, str]
    ) -> None:
        """Tell the siblings whether this process serves (and has once), which model
        versions, the last repository action it has applied and the models whose
        latest version failed (with the error)."""
        state = {
            "ready": ready,
            "versions": versions,
            "applied": applied,
            "errors": errors,
            "pid": os.getpid(),
        }
        if state == self._published:
            return
        self._published = state
        if self.state_dir is None or self.index is None:
            return
        path = process_file(self.state_dir, self.index)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(path)
        if ready:
            started_file(self.state_dir, self.index).touch()

    def processes(self) -> list[dict[str, Any] | None]:
        """Each process's published state (None: not running, or not published yet)."""
        if self.state_dir is None:
            return [self._published]
        found: list[dict[str, Any] | None] = []
        for i in range(self.count):
            try:
                state = json.loads(process_file(self.state_dir, i).read_text())
            except (OSError, ValueError):
                state = None
            if state is not None and not _pid_alive(int(state["pid"])):
                state = None
            found.append(state)
        return found

    def all_started(self) -> bool:
        """Every process has served once: a server is ready only when all its processes
        have loaded their models. A process that starts again afterwards takes no
        connection until it serves what its siblings do, so it does not hold it back."""
        if self.state_dir is None or self.index is None:
            return True
        return all(started_file(self.state_dir, i).exists() for i in range(self.count))

    def all_ready(self) -> bool:
        """Every process has served once, and every running one that has said how it
        is serves now: one whose gRPC port is down makes the server not ready, one that
        died and starts again (taking no connection meanwhile) does not."""
        if self.state_dir is None:
            return True
        return self.all_started() and all(p is None or p["ready"] for p in self.processes())

    def others_versions(self) -> list[dict[str, str]]:
        """The model versions of every other process that serves."""
        return [
            p["versions"]
            for i, p in enumerate(self.processes())
            if p is not None and p["ready"] and i != self.index
        ]

    # -- repository actions ------------------------------------------------------------------
    def post(self, verb: str, name: str) -> int:
        """Append a repository action for every process to apply; its generation."""
        if self.state_dir is None:
            action = Action(len(self._actions) + 1, verb, name)
            self._actions.append(action)
            return action.generation
        with (self.state_dir / ACTIONS_FILE).open("a+") as log:
            fcntl.flock(log, fcntl.LOCK_EX)
            try:
                log.seek(0)
                generation = sum(1 for _ in log) + 1
                log.write(json.dumps({"verb": verb, "name": name}) + "\n")
                log.flush()
            finally:
                fcntl.flock(log, fcntl.LOCK_UN)
        return generation

    def actions_after(self, generation: int) -> list[Action]:
        if self.state_dir is None:
            return self._actions[generation:]
        try:
            lines = (self.state_dir / ACTIONS_FILE).read_text().splitlines()
        except FileNotFoundError:
            return []
        actions = []
        for number, line in enumerate(lines, start=1):
            if number > generation and line.endswith("}"):
                data = json.loads(line)
                actions.append(Action(number, data["verb"], data["name"]))
        return actions

    def wait_applied(self, generation: int, timeout: float) -> bool:
        """Whether every running process has applied ``generation`` within ``timeout``
        (a process starting meanwhile replays it before it serves)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p is None or p["applied"] >= generation for p in self.processes()):
                return True
            time.sleep(0.05)
        return False
