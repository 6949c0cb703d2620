"""`make bench`'s rollouts part: what a shadow candidate costs the incumbent's clients.

Each variant is the iris model served by a `modelyard serve` of its own (as a rollout
runs, one model's candidate in its server): without a rollout (off), with a shadow
candidate sent every call (shadow 100%) or a tenth of them (shadow 10%) under the
default share of a busy process's time, every call under the former default share
(shadow 100% share 0.05) and with no share (shadow 100% share 1). The candidate is the
same model, so every compared call agrees. 1-row REST calls at 16 connections (wrk) go
to each server in turn, for six rounds with each variant leading some of them, and each
one's median req/s and p99 are set against off's: the incumbent's clients should see no
more than 10% less throughput or 10% more p99. The idle servers wait on their sockets
meanwhile.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
import yaml
from sklearn.datasets import load_iris

from benchmarks.load import Load, rest_body, wrk
from tests.support.server import REPO, ServerProcess

CONCURRENCY = 16
ROUNDS = 6
VARIANTS: dict[str, dict[str, Any] | None] = {
    "off": None,
    "shadow 100%": {"mode": "shadow"},
    "shadow 10%": {"mode": "shadow", "sample": 0.1},
    # The default share before it was lowered to 0.02.
    "shadow 100% share 0.05": {"mode": "shadow", "share": 0.05},
    # No share: the candidate takes whatever of the process's time its calls need.
    "shadow 100% share 1": {"mode": "shadow", "share": 1.0},
}


def _folder(root: Path, name: str, version: str, rollout: dict[str, Any] | None) -> Path:
    folder = root / name
    if not folder.exists():
        shutil.copytree(REPO / "model-settings/iris", folder)
    decl = yaml.safe_load((REPO / "model-settings/iris/model.yaml").read_text())
    decl.update(name=name, version=version)
    if rollout is not None:
        decl["rollout"] = rollout
    tmp = root / f".{name}.yaml"
    tmp.write_text(yaml.safe_dump(decl, sort_keys=False))
    tmp.replace(folder / "model.yaml")
    return folder


def _name(variant: str) -> str:
    return "iris-" + variant.replace(" ", "-").replace("%", "").replace(".", "")


def rollouts(args: argparse.Namespace, tmp: Path) -> dict:
    servers: dict[str, ServerProcess] = {}
    try:
        for variant, rollout in VARIANTS.items():
            models = tmp / _name(variant)
            _folder(models, _name(variant), "1", rollout)
            servers[variant] = ServerProcess(models, tmp / f"{_name(variant)}.log").start()
        for variant, rollout in VARIANTS.items():
            servers[variant].wait_ready(timeout=300)
            if rollout is not None:  # a new version: the candidate, beside version 1
                _folder(tmp / _name(variant), _name(variant), "2", rollout)
        deadline = time.monotonic() + 120
        for variant, rollout in VARIANTS.items():
            server = servers[variant]
            while rollout is not None and time.monotonic() < deadline:
                found = requests.get(f"{server.base}/modelyard/rollouts", timeout=10).json()
                if found["rollouts"]:
                    break
                time.sleep(0.2)
            else:
                if rollout is not None:
                    raise RuntimeError(f"candidate not loaded:\n{server.log()}")
        body = rest_body("input-0", load_iris().data[:1].astype(np.float64), "FP64")
        # A round unmeasured first: a fresh server answers 20-30% faster after its
        # first tens of thousands of calls, which the rounds would otherwise spread
        # unevenly over the variants.
        for variant in VARIANTS:
            url = f"{servers[variant].base}/v2/models/{_name(variant)}/infer"
            wrk(url, body, CONCURRENCY, args.duration)
        runs: dict[str, list[Load]] = {v: [] for v in VARIANTS}
        order = list(VARIANTS)
        for round_ in range(ROUNDS):
            # Each variant leads a round in turn: none always runs first, or always
            # right after the heaviest one.
            for variant in order[round_ % len(order) :] + order[: round_ % len(order)]:
                url = f"{servers[variant].base}/v2/models/{_name(variant)}/infer"
                runs[variant].append(wrk(url, body, CONCURRENCY, args.duration))
        status = {}
        for variant, rollout in VARIANTS.items():
            if rollout is not None:
                url = f"{servers[variant].base}/modelyard/rollouts"
                for r in requests.get(url, timeout=10).json()["rollouts"]:
                    status[r["model"]] = r
    finally:
        for server in servers.values():
            server.stop()
    off_rps = statistics.median(r.rps for r in runs["off"])
    off_p99 = statistics.median(r.p99_ms for r in runs["off"])
    print(f"\nshadow rollouts: the incumbent's 1-row REST calls at c{CONCURRENCY}, "
          f"median of {ROUNDS} rounds:")  # fmt: skip
    rows = []
    for variant in VARIANTS:
        rps = statistics.median(r.rps for r in runs[variant])
        p99 = statistics.median(r.p99_ms for r in runs[variant])
        errors = sum(r.errors for r in runs[variant])
        found = status.get(_name(variant))
        row = {
            "variant": variant,
            "rps": rps,
            "p99_ms": p99,
            "errors": errors,
            "ratio_rps": rps / off_rps if off_rps else None,
            "ratio_p99": p99 / off_p99 if off_p99 else None,
            "compared": found["compared"] if found else None,
            "dropped": found["dropped"] if found else None,
            "agreement": found["agreement"] if found else None,
        }
        rows.append(row)
        shadowed = (
            f"  compared {found['compared']}, dropped {found['dropped']}, "
            f"agreement {found['agreement']}"
            if found
            else ""
        )
        print(f"  {variant:20} {rps:7.0f} req/s ({row['ratio_rps']:.2f}x), p99 {p99:6.2f} ms "
              f"({row['ratio_p99']:.2f}x), errors {errors}{shadowed}")  # fmt: skip
    return {
        "concurrency": CONCURRENCY,
        "rounds": ROUNDS,
        "rows": rows,
        "runs": {v: [r.as_dict() for r in rs] for v, rs in runs.items()},
    }
