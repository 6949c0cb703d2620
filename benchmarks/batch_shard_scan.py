"""What a shard costs PostgreSQL to read: buffers and time per shard, from EXPLAIN
(ANALYZE, BUFFERS), of the hash filter batch runs use against key ranges taken from
the key's distribution (``percentile_disc``), at N = 1, 2, 4 over a 1M-entity table
with a primary key on the entity id, stored in key order and shuffled.

`python -m benchmarks.batch_shard_scan [--rows N]`; figures printed and written to
benchmarks/results/batch_shard_scan.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks.batch_scale import SHARD_COUNTS, features_frame
from modelyard.batch.shards import hash_sql
from tests.support.postgres import PostgresServer

RESULTS = Path(__file__).parent / "results" / "batch_shard_scan.json"
QUERY = "SELECT * FROM (SELECT user_id, a, b, c FROM users) AS f WHERE {}"


def explain(conn: sa.Connection, sql: str) -> dict[str, Any]:
    plan: Any = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}").scalar()
    plan = plan[0]
    top = plan["Plan"]
    return {
        "buffers": top["Shared Hit Blocks"] + top["Shared Read Blocks"],
        "rows": top["Actual Rows"],
        "node": top["Node Type"],
        "ms": plan["Execution Time"],
    }


def shard_scans(url: str, rows: int) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    frame = features_frame(rows)
    out = []
    for layout, data in (("key order", frame), ("shuffled", frame.sample(frac=1, random_state=1))):
        data.to_sql("users", engine, index=False, chunksize=100_000, if_exists="replace")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ALTER TABLE users ADD PRIMARY KEY (user_id)")
            conn.exec_driver_sql("VACUUM ANALYZE users")
            for n in SHARD_COUNTS:
                fractions = ", ".join(str(i / n) for i in range(1, n))
                bounds: list[str] = []
                boundaries: dict[str, Any] = {"buffers": 0}
                if n > 1:
                    sql = (f"SELECT percentile_disc(ARRAY[{fractions}]) "
                           "WITHIN GROUP (ORDER BY user_id) FROM users")  # fmt: skip
                    bounds = list(conn.exec_driver_sql(sql).scalar() or [])
                    boundaries = explain(conn, sql)
                for i in range(n):
                    hashed = hash_sql("postgresql", "f.user_id")
                    by_hash = f"COALESCE({hashed} %% {n}, 0) = {i}" if n > 1 else "true"
                    limits = ([f"f.user_id >= '{bounds[i - 1]}'"] if i > 0 else []) + (
                        [f"f.user_id < '{bounds[i]}'"] if i < n - 1 else []
                    )
                    by_range = " AND ".join(limits) or "true"
                    h = explain(conn, QUERY.format(by_hash))
                    r = explain(conn, QUERY.format(by_range))
                    out.append({"layout": layout, "shards": n, "shard": i,
                                "boundary_buffers": boundaries["buffers"],
                                "hash": h, "range": r})  # fmt: skip
                    print(f"{layout:9} N={n} shard {i}: hash {h['buffers']:6,} buffers "
                          f"{h['ms']:7.0f} ms; range {r['buffers']:6,} buffers {r['ms']:5.0f} ms "
                          f"({r['node']})", flush=True)  # fmt: skip
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE users")
    engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    server = PostgresServer().start()
    try:
        out = shard_scans(server.create_database("shard_scan"), args.rows)
    finally:
        server.stop()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"figures in {RESULTS}")


if __name__ == "__main__":
    main()
