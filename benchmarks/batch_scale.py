"""Batch at scale, on a real PostgreSQL (started here, as the tests start it):

- shards: rows each shard reads from a 1M-entity features table at N = 1, 2, 4, with
  the shard's filter in the database, against reading the whole query per shard (the
  way before: every shard read every row and kept its part);
- store writes: 1M predictions in 20,000-row chunks into PostgreSQL through COPY and
  one upsert, against the row-by-row INSERT ... ON CONFLICT (the way before), and into
  SQLite;
- end to end: the customer-profile model (a logistic regression, under a µs per row)
  and a 60-tree random forest (no-code scikit-learn, ~5 µs per row) over 1M users into
  a SQLite and a PostgreSQL store, rows/s against the same model scoring the same rows
  in memory, peak memory.

Every alternative is measured in the same run. `python -m benchmarks.batch_scale
[--rows N] [--skip-end-to-end]`; the figures go to benchmarks/results/batch_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from benchmarks.batch import RawScoring, end_to_end, forest_folder, model_folder
from modelyard.batch import DEFAULT_CHUNK_ROWS
from modelyard.store.connection import PredictionStore
from modelyard.store.predictions import Predictions
from modelyard.store.tables import PredictionsSpec, now
from tests.support.postgres import PostgresServer

SHARD_COUNTS = (1, 2, 4)
RESULTS = Path(__file__).parent / "results" / "batch_scale.json"


def features_frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "user_id": [f"u{i:07d}" for i in range(rows)],
            "a": rng.random(rows),
            "b": rng.random(rows),
            "c": rng.integers(0, 100, rows),
        }
    )


def shards(url: str, folder: Path, rows: int) -> list[dict]:
    from modelyard_runtimes.features import FeaturesOptions, FeatureSource

    engine = sa.create_engine(url)
    features_frame(rows).to_sql("users", engine, index=False, chunksize=100_000)
    engine.dispose()
    (folder / "features.sql").write_text("SELECT user_id, a, b, c FROM users\n")
    source = FeatureSource(
        "bench", FeaturesOptions(sql="features.sql", source=url, key="user_id"), folder
    )
    source.open()
    results = []
    try:
        start = time.perf_counter()
        whole = sum(len(c) for c in source.iter_all(DEFAULT_CHUNK_ROWS))
        whole_s = time.perf_counter() - start
        for count in SHARD_COUNTS:
            for index in range(count):
                start = time.perf_counter()
                read = sum(len(c) for c in source.iter_all(DEFAULT_CHUNK_ROWS, (index, count)))
                results.append(
                    {"shards": count, "shard": index, "rows_read": read,
                     "seconds": time.perf_counter() - start,
                     "before_rows_read": whole, "before_seconds": whole_s}
                )  # fmt: skip
    finally:
        source.close()
    return results


def writes(url: str, rows: int) -> list[dict]:
    spec = PredictionsSpec.of(
        "bench", "1", "user_id", {"user_id": "BYTES", "p_male": "FP32", "p_female": "FP32"}
    )
    rng = np.random.default_rng(4)
    chunks = []
    for first in range(0, rows, DEFAULT_CHUNK_ROWS):
        n = min(DEFAULT_CHUNK_ROWS, rows - first)
        p = rng.random(n).astype(np.float32)
        chunks.append(
            pd.DataFrame(
                {"user_id": [f"u{i:07d}" for i in range(first, first + n)],
                 "p_male": p, "p_female": 1 - p}
            )
        )  # fmt: skip
    results = []
    sqlite = f"sqlite:///{tempfile.mkdtemp()}/w.db"
    # Before and after alternate (twice each) on a machine others load; medians count.
    targets = [
        ("postgresql COPY into the table", url, True, True, "direct-1"),
        ("postgresql COPY + upsert (before)", url, True, False, "staged-1"),
        ("postgresql COPY into the table", url, True, True, "direct-2"),
        ("postgresql COPY + upsert (before)", url, True, False, "staged-2"),
        ("postgresql INSERT per row (before)", url, False, False, "insert"),
        ("sqlite", sqlite, True, True, "sqlite"),
    ]
    for name, target, copy, direct, run_id in targets:
        store = PredictionStore(sa.make_url(target))
        try:
            table = store.tables.ensure(spec)
            writer = Predictions(store.engine, copy=copy, direct=direct)
            start = time.perf_counter()
            for chunk in chunks:
                writer.write(table, spec, run_id, chunk, now())
            seconds = time.perf_counter() - start
        finally:
            store.close()
        results.append({"store": name, "rows": rows, "seconds": seconds,
                        "rows_per_s": rows / seconds})  # fmt: skip
    return results


def end_to_end_runs(tmp: Path, url: str, rows: int) -> list[dict]:
    os.environ["MODELYARD_BENCH_BATCH_ROWS"] = str(rows)
    profile = model_folder(tmp, rows)
    runs = []
    for model, folder in (("customer-profile", profile), ("forest", forest_folder(tmp, profile))):
        raw = RawScoring(folder, DEFAULT_CHUNK_ROWS)
        for name, store in (("sqlite", f"sqlite:///{tmp}/{model}.db"), ("postgresql", url)):
            raw_rows_per_s = raw.rows_per_s()
            run = end_to_end(folder, "duckdb", store, f"e2e-{name}", DEFAULT_CHUNK_ROWS)
            run.update(model=model, store=name, raw_rows_per_s=raw_rows_per_s,
                       stream_vs_raw=run["stream_rows_per_s"] / raw_rows_per_s)  # fmt: skip
            runs.append(run)
        del raw
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args()
    server = PostgresServer().start()
    out: dict = {"rows": args.rows, "load_average_before": os.getloadavg()[0]}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            out["shards"] = shards(server.create_database("shards"), folder, args.rows)
            print(f"shards on PostgreSQL, {args.rows:,} entities (before: every shard read all)")
            print(
                f"  {'N':>2} {'shard':>5} {'rows read':>10} {'s':>6} {'before rows':>11} {'s':>6}"
            )
            for r in out["shards"]:
                print(f"  {r['shards']:2d} {r['shard']:5d} {r['rows_read']:10,} {r['seconds']:6.2f}"
                      f" {r['before_rows_read']:11,} {r['before_seconds']:6.2f}")  # fmt: skip
            out["writes"] = writes(server.create_database("writes"), args.rows)
            print(f"store writes, {args.rows:,} rows in {DEFAULT_CHUNK_ROWS:,}-row chunks")
            for r in out["writes"]:
                print(f"  {r['store']:36} {r['rows_per_s']:10,.0f} rows/s ({r['seconds']:.1f} s)")
            if not args.skip_end_to_end:
                runs = end_to_end_runs(folder, server.create_database("e2e"), args.rows)
                out["end_to_end"] = runs
                print("end to end, features from DuckDB; raw: the model's batch pipeline "
                      "scoring the same rows in memory")  # fmt: skip
                for r in runs:
                    print(f"  {r['model']:16} {r['store']:10} raw {r['raw_rows_per_s']:9,.0f} "
                          f"rows/s, streaming {r['stream_rows_per_s']:9,.0f} "
                          f"({r['stream_vs_raw']:.2f}x raw), "
                          f"peak RSS {r['max_rss_mb']:.0f} MB")  # fmt: skip
    finally:
        server.stop()
    out["load_average_after"] = os.getloadavg()[0]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"figures in {RESULTS}")


if __name__ == "__main__":
    main()
