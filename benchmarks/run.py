"""`make bench`: modelyard against plain `mlserver start` on the same models, same machine,
same clients, same run; and the live registry's time-to-serve and swaps under load.

Prints one table per part and writes every figure to a JSON file.
Usage: python -m benchmarks.run [--duration S] [--out FILE] [--only serving,registry,peers,...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import requests
import xgboost as xgb
from sklearn.datasets import load_iris

from benchmarks.batch import batch
from benchmarks.environments import environments
from benchmarks.load import (
    Load,
    PlainMLServer,
    calls_per_s,
    datasets,
    grpc_body,
    grpc_load,
    h2load_grpc,
    plain_model_dir,
    rest_body,
    wrk,
)
from benchmarks.peers.bench import peers
from benchmarks.rollouts import rollouts
from benchmarks.runtimes import runtimes
from modelyard.serving.direct import DIRECT_ENV, predict_directly
from tests.support.server import REPO, ServerProcess

PARTS: dict[str, Callable[[argparse.Namespace, Path], dict]] = {}


def part(fn: Callable[[argparse.Namespace, Path], dict]) -> Callable:
    PARTS[fn.__name__] = fn
    return fn


@dataclass(frozen=True)
class Scenario:
    model: str
    rows: int
    concurrency: int
    protocol: str
    input_name: str
    datatype: str
    array: np.ndarray
    title: str = ""  # the label's name for the model, when not the model's own

    @property
    def label(self) -> str:
        return f"{self.title or self.model} {self.rows}-row {self.protocol} c{self.concurrency}"


# The customer-profile example online: each request names users by id and the model
# reads their features from SQLite (examples/customer-profile/features.db) to answer.
PROFILE = REPO / "examples/customer-profile"
USERS = np.array([f"u{i:07d}" for i in range(1, 101)], dtype=object)


def scenarios() -> list[Scenario]:
    out = []
    for model, (data, datatype) in datasets().items():
        for protocol in ("rest", "grpc"):
            for rows, concurrency in ((1, 1), (1, 16), (1000, 16)):
                out.append(
                    Scenario(model, rows, concurrency, protocol, "input-0", datatype, data[:rows])
                )
    for protocol in ("rest", "grpc"):
        for concurrency in (1, 16):
            out.append(
                Scenario(
                    "gender",
                    1,
                    concurrency,
                    protocol,
                    "user_id",
                    "BYTES",
                    USERS[:1],
                    title="customer-profile",
                )
            )
    return out


def measure(server: ServerProcess, s: Scenario, duration: float) -> Load:
    if s.protocol == "rest":
        url = f"{server.base}/v2/models/{s.model}/infer"
        return wrk(url, rest_body(s.input_name, s.array, s.datatype), s.concurrency, duration)
    body = grpc_body(s.model, s.input_name, s.array, s.datatype)
    metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
    return h2load_grpc(server.grpc_url, body, s.concurrency, duration, metrics)


def raw_rows_per_s(model: str, data: np.ndarray) -> float:
    """In-process `predict` on the same 1,000 rows: the limit for serving that model."""
    if model == "iris":
        predict = joblib.load(REPO / "model-settings/iris/model.joblib").predict
    else:
        booster = xgb.XGBClassifier()
        booster.load_model(REPO / "model-settings/breast-cancer/model.ubj")
        predict = booster.predict
    return calls_per_s(lambda: predict(data)) * len(data)


def direct_predict() -> dict[str, dict]:
    """One-row predictions of each model in process, as MLServer's runtime makes them:
    through the library's own ``predict``, and directly as modelyard serves them
    (modelyard.serving.direct)."""
    from mlserver_sklearn import SKLearnModel
    from mlserver_xgboost import XGBoostModel

    return {
        "iris": _direct_one("iris", SKLearnModel, "model.joblib"),
        "breast-cancer": _direct_one("breast-cancer", XGBoostModel, "model.ubj"),
    }


def _direct_one(name: str, runtime: type, artifact: str) -> dict:
    from mlserver.settings import ModelParameters, ModelSettings

    uri = str(REPO / "model-settings" / name / artifact)
    model = runtime(
        ModelSettings(name=name, implementation=runtime, parameters=ModelParameters(uri=uri))
    )
    asyncio.run(model.load())
    estimator, row = model._model, datasets()[name][0][:1]
    library = calls_per_s(lambda: type(estimator).predict(estimator, row))
    if not predict_directly(model):
        raise RuntimeError(f"{name}: the direct predictions did not agree at load")
    direct = calls_per_s(lambda: estimator.predict(row))
    return {"library_us": 1e6 / library, "direct_us": 1e6 / direct, "speedup": direct / library}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# MLServer's adaptive batching, measured against modelyard's default (off) with one
# caller and with 16: up to 16 requests in one call, waiting 0.5 ms at most.
BATCHING = {"max_batch_size": 16, "max_batch_time": 0.0005}
# modelyard with one default switched off, on the 1-row scenarios: the rows that show
# what that default is worth.
VARIANTS = {
    "batching": f"adaptive batching on ({BATCHING})",
    "unpinned": "processes placed by the kernel (--no-pin)",
    "python_grpc": "gRPC served by MLServer's gRPC server, without the Go front end",
    "library_predict": (
        f"models predicted through their libraries and MLServer's runtimes ({DIRECT_ENV}=off)"
    ),
    "front_go_gc": "the Go front end with Go's default garbage collection (GOGC=100)",
}


def one_row(s: Scenario) -> bool:
    return s.rows == 1 and s.concurrency in (1, 16)


def one_row_grpc(s: Scenario) -> bool:
    return one_row(s) and s.protocol == "grpc"


def grpc_direct(s: Scenario) -> bool:
    """gRPC calls to the models predicted directly (and answered by their lanes)."""
    return s.protocol == "grpc" and s.model in ("iris", "breast-cancer")


def predicted_directly(s: Scenario) -> bool:
    """Those, and the models' one-row REST calls."""
    return grpc_direct(s) or (one_row(s) and s.model in ("iris", "breast-cancer"))


@part
def serving(args: argparse.Namespace, tmp: Path) -> dict:
    folders = [REPO / "model-settings/iris", REPO / "model-settings/breast-cancer", PROFILE]
    models = plain_model_dir(folders, tmp / "models")
    batched = plain_model_dir(folders, tmp / "batched", **BATCHING)
    results: dict[str, dict[str, dict]] = {}
    no_front = {"MODELYARD_GRPC_FRONT": "off"}
    library = {DIRECT_ENV: "off"}
    go_gc = {"GOGC": "100", "GOMEMLIMIT": "off"}
    for label, cls, extra, env, folder, only in (
        ("mlserver", PlainMLServer, (), {}, models, None),
        ("modelyard", ServerProcess, ("--no-watch",), {}, models, None),
        ("batching", ServerProcess, ("--no-watch",), {}, batched, one_row),
        ("unpinned", ServerProcess, ("--no-watch", "--no-pin"), {}, models, one_row),
        ("python_grpc", ServerProcess, ("--no-watch",), no_front, models, one_row_grpc),
        ("library_predict", ServerProcess, ("--no-watch",), library, models, predicted_directly),
        ("front_go_gc", ServerProcess, ("--no-watch",), go_gc, models, grpc_direct),
    ):
        server = cls(folder, tmp / f"{label}.log", extra_args=extra, env=env).start()
        try:
            server.wait_ready()
            for s in scenarios():
                if only is not None and not only(s):
                    continue
                # Warm up connections, caches and the model before measuring.
                measure(server, s, 1.0)
                results.setdefault(s.label, {})[label] = measure(server, s, args.duration).as_dict()
        finally:
            server.stop()

    raw = {m: raw_rows_per_s(m, d) for m, (d, _) in datasets().items()}
    print(f"\n{'scenario':34} {'plain MLServer':>26} {'modelyard':>26} {'ratio':>6}"
          f" {'p99 ratio':>9}")  # fmt: skip
    print(f"{'':34} {'req/s   p50   p99  err':>26} {'req/s   p50   p99  err':>26}")
    rows = []
    for s in scenarios():
        base, ours = results[s.label]["mlserver"], results[s.label]["modelyard"]
        row = {
            "scenario": s.label,
            "mlserver": base,
            "modelyard": ours,
            "ratio_rps": ratio(ours["rps"], base["rps"]),
            "ratio_p99": ratio(ours["p99_ms"], base["p99_ms"]),
        }
        if s.rows > 1:
            row["raw_rows_per_s"] = raw[s.model]
            row["served_rows_per_s"] = ours["rps"] * s.rows
            row["served_vs_raw"] = ratio(row["served_rows_per_s"], raw[s.model])
        rows.append(row)

        def cell(r: dict) -> str:
            return f"{r['rps']:7.0f} {r['p50_ms']:5.1f} {r['p99_ms']:5.1f} {r['errors']:4d}"

        print(f"{s.label:34} {cell(base):>26} {cell(ours):>26} {row['ratio_rps']:5.2f}x"
              f" {row['ratio_p99']:8.2f}x")  # fmt: skip
    for variant, what in VARIANTS.items():
        print(f"\n{what}, against modelyard's defaults:")
        for row in rows:
            other = results[row["scenario"]].get(variant)
            if other is not None:
                row[variant] = other
                row[f"{variant}_vs_default"] = ratio(other["rps"], row["modelyard"]["rps"])
                print(f"  {row['scenario']:34} {other['rps']:7.0f} req/s, p99"
                      f" {other['p99_ms']:5.1f} ms  {row[f'{variant}_vs_default']:.2f}x of the"
                      " default")  # fmt: skip
    direct = direct_predict()
    print("\n1-row predict in process, the library's own against modelyard's direct one:")
    for name, d in direct.items():
        print(f"  {name:34} {d['library_us']:5.0f} us library {d['direct_us']:5.0f} us direct"
              f"  {d['speedup']:.2f}x")  # fmt: skip
    print("\n1,000-row requests, served rows/s by modelyard against in-process predict rows/s:")
    for row in rows:
        if "raw_rows_per_s" in row:
            print(f"  {row['scenario']:34} {row['served_rows_per_s']:12,.0f} rows/s served"
                  f" {row['raw_rows_per_s']:12,.0f} raw  {row['served_vs_raw']:.2f}x")  # fmt: skip
    return {"rows": rows, "direct_predict": direct}


@part
def registry(args: argparse.Namespace, tmp: Path) -> dict:
    """Time from a folder landing to its first answer; swaps under load."""
    models = tmp / "live"
    models.mkdir()
    staged = plain_model_dir([REPO / "model-settings/iris"], tmp / "staged") / "iris"
    server = ServerProcess(models, tmp / "registry.log").start()
    iris_body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4],
                             "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip
    try:
        server.wait_ready()
        landings = []
        for i in range(5):
            name = f"iris-{i}"
            settings = json.loads((staged / "model-settings.json").read_text())
            settings["name"] = name
            stage = tmp / f"stage-{i}"
            stage.mkdir()
            (stage / "model-settings.json").write_text(json.dumps(settings))
            start = time.perf_counter()
            # A deploy tool lands a whole folder at once: a rename into the directory.
            os.rename(stage, models / name)
            while True:
                r = requests.post(f"{server.base}/v2/models/{name}/infer", json=iris_body,
                                  timeout=5)  # fmt: skip
                if r.status_code == 200:
                    break
                time.sleep(0.005)
            landings.append(time.perf_counter() - start)

        # Swaps under load: one folder is rewritten 10 times while clients call it.
        target = models / "iris-0"
        body = grpc_body("iris-0", "input-0", np.array([[5.1, 3.5, 1.4, 0.2]]), "FP64")
        baseline = grpc_load(server.grpc_url, body, 4, args.duration)
        swap_seconds = max(args.duration, 6.0)
        swapped: list[float] = []

        def swapper() -> None:
            time.sleep(0.5)
            for version in range(2, 12):
                settings = json.loads((target / "model-settings.json").read_text())
                settings["parameters"]["version"] = str(version)
                tmp_file = target / ".next.json"
                tmp_file.write_text(json.dumps(settings))
                tmp_file.replace(target / "model-settings.json")
                start = time.perf_counter()
                while True:
                    status = requests.get(f"{server.base}/modelyard/status", timeout=5).json()
                    state = {m["name"]: m for m in status["models"]}["iris-0"]
                    if state["serving_version"] == str(version):
                        break
                    time.sleep(0.01)
                swapped.append(time.perf_counter() - start)
                time.sleep(max(0.0, (swap_seconds - 1.0) / 10 - swapped[-1]))

        thread = threading.Thread(target=swapper)
        thread.start()
        during = grpc_load(server.grpc_url, body, 4, swap_seconds)
        thread.join()
    finally:
        server.stop()
    result = {
        "landing_to_answer_s": landings,
        "landing_to_answer_median_s": float(np.median(landings)),
        "swaps": len(swapped),
        "swap_to_serving_s": swapped,
        "load_without_swaps": baseline.as_dict(),
        "load_during_swaps": during.as_dict(),
    }
    print("\nlive registry")
    median_ms, max_ms = np.median(landings) * 1000, max(landings) * 1000
    print(f"  folder landed -> iris answering: median {median_ms:.0f} ms "
          f"(max {max_ms:.0f} ms over {len(landings)}; target < 2000 ms)")  # fmt: skip
    print(f"  {len(swapped)} swaps under load (gRPC, 4 callers): sent {during.requests}, "
          f"failed {during.errors} (target 0)")  # fmt: skip
    print(f"  p99 during swaps {during.p99_ms:.1f} ms vs without {baseline.p99_ms:.1f} ms; "
          f"req/s {during.rps:.0f} vs {baseline.rps:.0f}")  # fmt: skip
    return result


# Payload sampling and drift: iris served as modelyard serves it by default, and again
# logging a share of its requests with a reference sample, the server computing the
# drift gauges every MONITORING_REFRESH_S over the day, the week and the last 1,000
# logged requests (60 s by default: here often enough to run during each measurement).
MONITORING_RATE = 0.1
MONITORING_REFRESH_S = "2"
MONITORING_ROUNDS = 3


def monitored(s: Scenario) -> bool:
    return s.model == "iris" and s.concurrency == 16


@part
def monitoring(args: argparse.Namespace, tmp: Path) -> dict:
    """req/s of iris with payload sampling and drift on, against off."""
    import pandas as pd

    x, _ = load_iris(return_X_y=True)
    folders = {}
    for label in ("off", "on"):
        folder = tmp / label / "iris"
        shutil.copytree(REPO / "model-settings/iris", folder)
        folders[label] = folder
    reference = pd.DataFrame(x, columns=[f"input-0[{i}]" for i in range(4)])
    reference["predict"] = joblib.load(folders["on"] / "model.joblib").predict(x)
    reference.to_parquet(folders["on"] / "reference.parquet")
    with (folders["on"] / "model.yaml").open("a") as f:
        f.write(f"monitoring:\n  payload_sample_rate: {MONITORING_RATE}\n"
                "  reference: reference.parquet\n")  # fmt: skip
    env = {"MODELYARD_QUALITY_REFRESH_S": MONITORING_REFRESH_S}
    # Off and on alternate, MONITORING_ROUNDS times each, a fresh server each time: a
    # machine whose load changes during the run weighs on both alike; the median counts.
    runs: dict[str, dict[str, list[dict]]] = {}
    for _ in range(MONITORING_ROUNDS):
        for label in ("off", "on"):
            server = ServerProcess(
                folders[label].parent, tmp / f"{label}.log", extra_args=("--no-watch",), env=env
            ).start()
            try:
                server.wait_ready()
                for s in scenarios():
                    if monitored(s):
                        measure(server, s, 1.0)
                        load = measure(server, s, args.duration).as_dict()
                        runs.setdefault(s.label, {}).setdefault(label, []).append(load)
            finally:
                server.stop()
    results = {
        scenario: {label: sorted(loads, key=lambda r: r["rps"])[len(loads) // 2]
                   for label, loads in by_label.items()}
        for scenario, by_label in runs.items()
    }  # fmt: skip
    print(f"\npayload sampling ({MONITORING_RATE:.0%}) and drift on, against off:")
    rows = []
    for scenario, pair in results.items():
        off, on = pair["off"], pair["on"]
        row = {"scenario": scenario, **pair, "ratio_rps": ratio(on["rps"], off["rps"])}
        rows.append(row)
        print(f"  {scenario:34} off {off['rps']:7.0f} req/s, p99 {off['p99_ms']:5.1f} ms"
              f"  on {on['rps']:7.0f} req/s, p99 {on['p99_ms']:5.1f} ms"
              f"  {row['ratio_rps']:.2f}x")  # fmt: skip
    return {
        "sample_rate": MONITORING_RATE, "refresh_s": MONITORING_REFRESH_S,
        "rounds": MONITORING_ROUNDS, "rows": rows, "runs": runs,
    }  # fmt: skip


part(batch)
part(runtimes)
part(rollouts)
part(environments)
part(peers)


def machine() -> dict:
    cpu = ""
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/latest.json")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    args = parser.parse_args()
    for tool, package in (("wrk", "wrk"), ("h2load", "nghttp2-client")):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: `apt-get install {package}` (make bench does this)")
    report = {"machine": machine(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print(f"machine: {report['machine']}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            part_dir = Path(tmp) / name
            part_dir.mkdir()
            report[name] = PARTS[name](args, part_dir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
