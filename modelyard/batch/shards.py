"""Which shard of a run an entity belongs to: one definition, computed by the database.

    shard(key, n) = (first 8 hex digits of MD5(key as text, UTF-8), as an integer) mod n

The key as text is what ``CAST(key AS TEXT)`` gives: the text itself, or an integer's
decimal digits (``42`` and ``'42'`` are the same entity, in the same shard). A NULL key
belongs to shard 0, where the run counts it as a bad row.

Each shard runs the user's ``features.sql`` wrapped in a filter on that definition, so
the database hands over only the shard's rows (N shards read the table once between
them, not N times):

    SELECT * FROM (<features.sql>) AS features WHERE COALESCE(<hash> % n, 0) = i

PostgreSQL and DuckDB compute MD5 themselves; SQLite has no hash function, so the
connection is given one (``SQLITE_FUNCTION``, this module's ``shard_hash``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa

# The SQLite function a features connection is given (see ``register_sqlite``).
SQLITE_FUNCTION = "modelyard_shard_hash"
HASH_HEX_DIGITS = 8
# The wrapped query's alias; the filter names the key through it.
ALIAS = "features"


def key_text(key: Any) -> str:
    """The key as ``CAST(key AS TEXT)`` spells it."""
    if isinstance(key, bytes):
        return key.decode()
    if isinstance(key, bool | float):
        raise TypeError(f"entity key {key!r}: shard keys are text or integers")
    return str(key)


def shard_hash(key: Any) -> int | None:
    """The hash shards are taken of (NULL for a NULL key, as in SQL)."""
    if key is None:
        return None
    digest = hashlib.md5(key_text(key).encode(), usedforsecurity=False).hexdigest()
    return int(digest[:HASH_HEX_DIGITS], 16)


def shard_of(key: Any, count: int) -> int:
    """The shard (0 to count - 1) of ``key``; a NULL key's is 0."""
    value = shard_hash(key)
    return 0 if value is None else value % count


def hash_sql(dialect: str, column: str) -> str:
    """``shard_hash`` of the SQL expression ``column`` in ``dialect``."""
    if dialect == "postgresql":
        # 8 hex digits as the low 32 bits of a BIGINT: never negative.
        return (
            f"('x' || lpad(substr(md5(CAST({column} AS TEXT)), 1, {HASH_HEX_DIGITS}), 16, '0'))"
            "::bit(64)::bigint"
        )
    if dialect == "duckdb":
        return (
            f"CAST('0x' || substr(md5(CAST({column} AS VARCHAR)), 1, {HASH_HEX_DIGITS}) AS BIGINT)"
        )
    if dialect == "sqlite":
        return f"{SQLITE_FUNCTION}({column})"
    raise ValueError(f"shards are computed on SQLite, DuckDB and PostgreSQL, not {dialect}")


def shard_query(dialect: sa.Dialect, sql: str, key: str, index: int, count: int) -> str:
    """``sql`` (a SELECT) filtered to the rows of shard ``index`` of ``count``."""
    if count == 1:
        return sql
    column = f"{ALIAS}.{dialect.identifier_preparer.quote(key)}"
    predicate = f"COALESCE({hash_sql(dialect.name, column)} % {int(count)}, 0) = {int(index)}"
    return f"SELECT * FROM ({sql}) AS {ALIAS} WHERE {predicate}"


def register_sqlite(engine: sa.Engine) -> None:
    """Give every SQLite connection of ``engine`` the shard hash function."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _: Any) -> None:
        dbapi_connection.create_function(SQLITE_FUNCTION, 1, shard_hash, deterministic=True)
