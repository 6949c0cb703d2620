"""Where a batch run's time goes: each stage alone over the same rows (reading the
features from DuckDB, scoring in memory, writing to SQLite and to PostgreSQL), then the
whole run into each store; wall and this process's CPU seconds, as the machine may be
loaded by others. `python -m benchmarks.batch_stages [--rows N]`."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from benchmarks.batch import SOURCES, RawScoring, model_folder
from modelyard.batch import DEFAULT_CHUNK_ROWS
from modelyard.batch.run import BatchJob, RunOptions
from modelyard.store.connection import PredictionStore
from modelyard.store.tables import now
from tests.support.postgres import PostgresServer


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float], rows: int) -> str:
    cpu = time.process_time() - start[1]
    wall = time.perf_counter() - start[0]
    return f"wall {wall:6.2f} s, cpu {cpu:6.2f} s ({cpu / rows * 1e6:.2f} µs per row)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200_000)
    rows = parser.parse_args().rows
    tmp = Path(tempfile.mkdtemp())
    os.environ["MODELYARD_BENCH_BATCH_ROWS"] = str(rows)
    folder = model_folder(tmp, rows)
    pipeline = RawScoring(folder, DEFAULT_CHUNK_ROWS).pipeline
    assert pipeline.features is not None
    start = clock()
    chunks = list(pipeline.features.iter_all(DEFAULT_CHUNK_ROWS))
    print("read, DuckDB     ", since(start, rows), flush=True)
    start = clock()
    scored = [pipeline.score(c) for c in chunks]
    print("score            ", since(start, rows), flush=True)
    server = PostgresServer().start()
    try:
        os.environ["FEATURES_DB_URL"] = SOURCES["duckdb"]
        for name, url in (("sqlite", f"sqlite:///{tmp}/p.db"),
                          ("postgresql", server.create_database("stages"))):  # fmt: skip
            job = BatchJob(folder)
            store = PredictionStore(sa.make_url(url))
            try:
                table = store.tables.ensure(job.spec)
                start = clock()
                for frame in scored:
                    store.predictions.write(table, job.spec, "write", frame, now())
                print(f"write, {name:10}", since(start, rows), flush=True)
            finally:
                store.close()
            job.store_url = url
            start = clock()
            result = job.run(RunOptions(run_id="run", bar=False))
            assert result.error is None, result.error
            print(f"run, {name:12}", since(start, rows), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
