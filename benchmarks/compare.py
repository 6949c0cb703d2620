"""Before/after rows for a change to the serving path: the serving scenarios of
`make bench`, on this checkout and on an earlier commit, measured in turn in one run.

The two servers alternate scenario by scenario (before, after, before, after...), each
warmed up first, so a machine whose speed drifts during the run moves both columns
alike; the spread of the repeated rows is the noise to read the ratios against.

Usage: python -m benchmarks.compare --before REV [--repeat 2] [--duration 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from benchmarks.load import plain_model_dir
from benchmarks.run import PROFILE, Scenario, measure, ratio, scenarios
from tests.support.server import REPO, ServerProcess

# Files a checkout needs that are made by `make models`, not kept in git.
MADE = [
    "model-settings/iris/model.joblib",
    "model-settings/breast-cancer/model.ubj",
    "examples/customer-profile/model.joblib",
    "examples/customer-profile/preprocess.pkl",
    "examples/customer-profile/features.db",
]


def checkout(rev: str, where: Path) -> Path:
    """``rev`` checked out at ``where``, with this checkout's trained models."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(where), rev],
                   check=True)  # fmt: skip
    for path in MADE:
        if (REPO / path).exists():
            shutil.copy2(REPO / path, where / path)
    return where


def python_path(tree: Path) -> str:
    return os.pathsep.join(str(tree / p) for p in ("", "runtimes", "operator"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the commit to compare against")
    parser.add_argument("--repeat", type=int, default=2, help="measurements of each scenario")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/compare.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="modelyard-compare-") as tmp_name:
        tmp = Path(tmp_name)
        before_tree = checkout(args.before, tmp / "before")
        try:
            folders = [REPO / "model-settings/iris", REPO / "model-settings/breast-cancer", PROFILE]
            models = plain_model_dir(folders, tmp / "models")
            servers = {
                "before": ServerProcess(models, tmp / "before.log", extra_args=("--no-watch",),
                                        env={"PYTHONPATH": python_path(before_tree)},
                                        cwd=before_tree),
                "after": ServerProcess(models, tmp / "after.log", extra_args=("--no-watch",)),
            }  # fmt: skip
            results = run(servers, args)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(before_tree)], check=False)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"before": args.before, "rows": results}, indent=2))
    print(f"\nwritten to {args.out}")


def run(servers: dict[str, ServerProcess], args: argparse.Namespace) -> list[dict]:
    for server in servers.values():
        server.start()
    try:
        for server in servers.values():
            server.wait_ready()
        rows = []
        print(f"{'scenario':34} {'before req/s':>24} {'after req/s':>24} {'after/before':>12}")
        for s in scenarios():
            rows.append(compare(servers, s, args))
        return rows
    finally:
        for server in servers.values():
            server.stop()


def compare(servers: dict[str, ServerProcess], s: Scenario, args: argparse.Namespace) -> dict:
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for server in servers.values():
        measure(server, s, 1.0)  # warm up connections, caches and the model
    for _ in range(args.repeat):
        for name, server in servers.items():
            runs[name].append(measure(server, s, args.duration).as_dict())
    rps = {name: sorted(r["rps"] for r in found) for name, found in runs.items()}
    best = {name: values[-1] for name, values in rps.items()}
    row = {
        "scenario": s.label,
        "runs": runs,
        "ratio_rps": ratio(best["after"], best["before"]),
        "errors": sum(r["errors"] for found in runs.values() for r in found),
    }

    def spread(values: list[float]) -> str:
        return " / ".join(f"{v:.0f}" for v in values)

    print(f"{s.label:34} {spread(rps['before']):>24} {spread(rps['after']):>24}"
          f" {row['ratio_rps']:11.2f}x")  # fmt: skip
    return row


if __name__ == "__main__":
    main()
