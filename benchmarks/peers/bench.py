"""The `peers` part of `make bench`: modelyard against every peer, in one run, on the
same model files, with the same load generators (wrk for REST, h2load for gRPC), and
perf_analyzer as a second client where it runs; the transport limit beside them.

Each row: a model, 1 or 1,000 rows, REST or gRPC, 1 or 16 callers; each server's req/s,
p50, p99 and errors; the best peer; modelyard's ratio to it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from benchmarks.load import Load, datasets, grpc_body, h2load_grpc, plain_model_dir, wrk
from benchmarks.peers.peer import Peer
from benchmarks.peers.servers import MODEL_PEERS, PEERS, Constant, Modelyard
from modelyard.serving.processes import auto_processes
from tests.support.perf_analyzer import PerfAnalyzerFailed, run_perf_analyzer
from tests.support.server import REPO

ROWS = (1, 1000)
CONCURRENCY = (1, 16)
PROTOCOLS = ("rest", "grpc")
# perf_analyzer's runs: 1-row calls (it sends its own random rows of the model's shape).
PERF_ANALYZER_PEERS = ("modelyard", "mlserver", "kserve")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def label(model: str, rows: int, protocol: str, concurrency: int) -> str:
    return f"{model} {rows}-row {protocol} c{concurrency}"


def check_grpc(server: Peer, model: str, rows: np.ndarray, datatype: str) -> None:
    """One call through tritonclient before the load: h2load cannot see a gRPC status
    carried in trailers, so a server that answers errors is caught here."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    inp = grpcclient.InferInput("input-0", list(rows.shape), datatype)
    inp.set_data_from_numpy(rows)
    answer = client.infer(model, [inp])
    if answer.as_numpy("predict") is None:
        raise RuntimeError(f"{server.name}: no 'predict' output from {model} over gRPC")


def measure(server: Peer, model: str, rows: np.ndarray, datatype: str, protocol: str,
            concurrency: int, duration: float) -> Load:  # fmt: skip
    if protocol == "rest":
        return wrk(server.rest_url(model), server.body(rows, datatype), concurrency, duration)
    metrics = f"http://127.0.0.1:{server.metrics_port}/metrics" if server.grpc_metrics else None
    body = grpc_body(model, "input-0", rows, datatype)
    return h2load_grpc(server.grpc_url, body, concurrency, duration, metrics)


def run_server(server: Peer, duration: float, model_rows: bool = True) -> dict[str, dict]:
    """Every scenario the server takes, after one warm-up run each; with ``model_rows``
    False (the constant servers), 1-row iris bodies only."""
    out: dict[str, dict] = {}
    server.start()
    try:
        server.wait_ready()
        for protocol in server.protocols:
            for model, (data, datatype) in datasets().items():
                for rows in ROWS if model_rows else (1,):
                    if protocol == "grpc":
                        check_grpc(server, model, data[:rows], datatype)
                    for concurrency in CONCURRENCY:
                        args = (server, model, data[:rows], datatype, protocol, concurrency)
                        measure(*args, 1.0)
                        name = label(model, rows, protocol, concurrency)
                        out[name] = measure(*args, duration).as_dict()
                        print(f"  {server.name:15} {name:34} {out[name]['rps']:8.0f} req/s"
                              f" p99 {out[name]['p99_ms']:6.1f} ms"
                              f" errors {out[name]['errors']}", flush=True)  # fmt: skip
                if not model_rows:
                    break
        if server.name in PERF_ANALYZER_PEERS:
            out["perf_analyzer"] = perf_analyzer(server, duration)
    finally:
        server.stop()
    return out


def perf_analyzer(server: Peer, duration: float) -> dict[str, dict]:
    """perf_analyzer's 1-row figures, or why it did not run against this server."""
    out: dict[str, dict] = {}
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        for model in datasets():
            for concurrency in CONCURRENCY:
                name = label(model, 1, "rest" if protocol == "http" else "grpc", concurrency)
                try:
                    found = run_perf_analyzer(
                        model, url, protocol, concurrency,
                        measurement_ms=int(duration * 1000), timeout=120,
                    )  # fmt: skip
                except PerfAnalyzerFailed as e:
                    reason = next((line for line in str(e).splitlines() if "rror" in line), "")
                    out[name] = {"error": reason or str(e).splitlines()[0]}
                    continue
                out[name] = {"rps": found.throughput, "p50_ms": found.p50_us / 1000,
                             "p99_ms": found.p99_us / 1000}  # fmt: skip
    return out


def peers(args: argparse.Namespace, tmp: Path) -> dict:
    """modelyard, each peer and the transport limit, one after another on this machine."""
    workers = auto_processes()
    for peer in MODEL_PEERS:
        peer(tmp, tmp / "install.log").install()  # before any timing: once, minutes
    folders = [REPO / "model-settings/iris", REPO / "model-settings/breast-cancer"]
    models = plain_model_dir(folders, tmp / "models")
    results: dict[str, dict[str, dict]] = {}
    every: tuple[type[Peer], ...] = (*PEERS, Constant)
    for peer in every:
        print(f"\n{peer.name}: {peer.settings}", flush=True)
        server = peer(models, tmp / f"{peer.name}.log", workers=workers)
        results[peer.name] = run_server(server, args.duration, model_rows=peer is not Constant)
    second = {n: r.pop("perf_analyzer") for n, r in results.items() if "perf_analyzer" in r}
    rows = table(results)
    print_perf_analyzer(second, results)
    return {
        "workers": workers,
        "settings": {p.name: p.settings for p in every},
        "protocols": {p.name: list(p.protocols) for p in every},
        "rows": rows,
        "transport_limit": limit_rows(results),
        "perf_analyzer": second,
        "servers": results,
    }


def table(results: dict[str, dict[str, dict]]) -> list[dict]:
    """Per scenario: modelyard, the best peer by req/s, and the ratios."""
    rows = []
    print(f"\n{'scenario':34} {'modelyard':>9} {'best peer':>24} {'ratio':>6}"
          f" {'p99 ours/theirs':>16}")  # fmt: skip
    for name, ours in results[Modelyard.name].items():
        theirs = {p.name: results[p.name][name] for p in MODEL_PEERS if name in results[p.name]}
        best = max(theirs, key=lambda p: theirs[p]["rps"])
        row = {
            "scenario": name,
            "modelyard": ours,
            "best_peer": best,
            "peer": theirs[best],
            "ratio_rps": ratio(ours["rps"], theirs[best]["rps"]),
            "ratio_p99": ratio(ours["p99_ms"], theirs[best]["p99_ms"]),
            "peers": {p: r["rps"] for p, r in theirs.items()},
        }
        rows.append(row)
        print(f"{name:34} {ours['rps']:9.0f} {best:>14} {theirs[best]['rps']:9.0f}"
              f" {row['ratio_rps']:5.2f}x {row['ratio_p99']:15.2f}x")  # fmt: skip
    return rows


def limit_rows(results: dict[str, dict[str, dict]]) -> list[dict]:
    """Each server's 1-row iris req/s as a share of the constant servers' at the same
    protocol and callers: how close each comes to what the machine serves at all."""
    out = []
    print("\n1-row iris as a share of the transport limit (constant answers, no model):")
    for name, limit in results[Constant.name].items():
        shares = {
            p: results[p][name]["rps"] / limit["rps"]
            for p in (Modelyard.name, *(m.name for m in MODEL_PEERS))
            if name in results[p] and limit["rps"]
        }
        out.append({"scenario": name, "limit": limit, "share": shares})
        cells = "  ".join(f"{p} {s:.2f}" for p, s in shares.items())
        print(f"  {name:28} limit {limit['rps']:7.0f} req/s  {cells}")
    return out


def print_perf_analyzer(second: dict[str, dict[str, dict]], results: dict[str, dict]) -> None:
    print("\nperf_analyzer (1 row, its own random rows) beside wrk/h2load on the same server:")
    for server, runs in second.items():
        for name, found in runs.items():
            ours = results[server].get(name, {})
            if "error" in found:
                print(f"  {server:15} {name:30} did not run: {found['error'][:90]}")
                continue
            print(f"  {server:15} {name:30} {found['rps']:8.0f} req/s p99 {found['p99_ms']:6.1f} ms"
                  f"  (wrk/h2load {ours.get('rps', float('nan')):8.0f} req/s"
                  f" p99 {ours.get('p99_ms', float('nan')):6.1f} ms)")  # fmt: skip


def markdown(result: dict) -> str:
    """The part's figures as the Markdown tables of benchmarks/README.md:
    `python -m benchmarks.peers.bench [FILE]` (benchmarks/results/latest.json)."""
    names = [n for n in result["servers"] if n not in (Modelyard.name, Constant.name)]
    lines = [
        "| scenario | modelyard req/s (p99 ms) | " + " | ".join(names) + " | best peer | ratio"
        " req/s | ratio p99 |",
        "|---" * (len(names) + 5) + "|",
    ]
    for row in result["rows"]:
        ours = row["modelyard"]
        cells = [f"{row['peers'][n]:.0f}" if n in row["peers"] else "-" for n in names]
        lines.append(
            f"| {row['scenario']} | {ours['rps']:.0f} ({ours['p99_ms']:.1f}) | "
            + " | ".join(cells)
            + f" | {row['best_peer']} | {row['ratio_rps']:.2f}x | {row['ratio_p99']:.2f}x |"
        )
    lines += ["", "| 1-row iris | transport limit req/s | modelyard | " + " | ".join(names) + " |",
              "|---" * (len(names) + 3) + "|"]  # fmt: skip
    for row in result["transport_limit"]:
        shares = [f"{row['share'][n]:.2f}" if n in row["share"] else "-" for n in names]
        lines.append(
            f"| {row['scenario']} | {row['limit']['rps']:.0f} | "
            f"{row['share'].get(Modelyard.name, float('nan')):.2f} | " + " | ".join(shares) + " |"
        )
    head = "| server | scenario | perf_analyzer req/s (p99 ms) | wrk/h2load req/s (p99 ms) |"
    lines += ["", head, "|---|---|---|---|"]
    for server, runs in result["perf_analyzer"].items():
        for name, found in runs.items():
            ours = result["servers"][server].get(name)
            theirs = "-" if ours is None else f"{ours['rps']:.0f} ({ours['p99_ms']:.1f})"
            if "error" in found:
                lines.append(
                    f"| {server} | {name} | did not run: `{found['error'][:60]}` | {theirs} |"
                )
            else:
                lines.append(
                    f"| {server} | {name} | {found['rps']:.0f} ({found['p99_ms']:.1f}) | {theirs} |"
                )
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "benchmarks/results/latest.json"
    print(markdown(json.loads(path.read_text())["peers"]))
