"""Shards filtered by the database: one hash definition computed by SQLite, DuckDB and
PostgreSQL alike, so the shards of a run never overlap and add up to the whole table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from modelyard_runtimes.features import FeaturesOptions, FeatureSource

from modelyard.batch.shards import shard_of
from tests.support.postgres import PostgresServer

# Text keys, integer keys, a key beyond ASCII and an empty one.
TEXT_KEYS = [f"u{i:07d}" for i in range(2000)] + ["é-ü", ""]
INT_KEYS = list(range(-5, 1500))
COUNTS = (1, 2, 3, 4)


def _fill(url: str, keys: list, key_type: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE users (user_id {key_type}, age INTEGER)")
            conn.execute(
                sa.text("INSERT INTO users VALUES (:k, :a)"),
                [{"k": k, "a": i} for i, k in enumerate(keys)],
            )
    finally:
        engine.dispose()


def _source(folder: Path, url: str) -> Iterator[FeatureSource]:
    (folder / "features.sql").write_text("SELECT user_id, age FROM users;\n")
    source = FeatureSource("m", FeaturesOptions(sql="features.sql", source=url, key="user_id"),
                           folder)  # fmt: skip
    source.open()
    try:
        yield source
    finally:
        source.close()


@pytest.fixture(params=["sqlite", "duckdb", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/f.db", tmp_path
    elif request.param == "duckdb":
        pytest.importorskip("duckdb_engine")
        yield f"duckdb:///{tmp_path}/f.duckdb", tmp_path
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        yield server.create_database(f"shards_{len(tmp_path.name)}_{tmp_path.name[-6:]}"), tmp_path


@pytest.mark.parametrize(("keys", "key_type"), [(TEXT_KEYS, "TEXT"), (INT_KEYS, "BIGINT")])
def test_shards_are_disjoint_complete_and_the_same_on_every_database(
    database: tuple[str, Path], keys: list, key_type: str
) -> None:
    url, folder = database
    _fill(url, keys, key_type)
    for source in _source(folder, url):
        for count in COUNTS:
            seen: list = []
            for index in range(count):
                rows = [
                    k for chunk in source.iter_all(500, (index, count))
                    for k in chunk["user_id"].tolist()
                ]  # fmt: skip
                assert source.count((index, count)) == len(rows)
                # The database's partition is the definition's, key by key.
                assert all(shard_of(k, count) == index for k in rows), (count, index)
                seen += rows
            assert len(seen) == len(set(seen)) == len(keys)  # no overlap, nothing left out
            assert sorted(seen) == sorted(keys)
