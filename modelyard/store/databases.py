"""SQLAlchemy URLs as declarations write them, and the pooled engines made from them.

A declaration writes ``${FEATURES_DB_URL:-sqlite:///features.db}``: the placeholder
is expanded here, at load, and a relative SQLite or DuckDB file is the model folder's,
wherever the server or the batch job was started.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from modelyard.declarations.interpolate import expand


def database_message(e: SQLAlchemyError) -> str:
    """The driver's own message of a database error, on one line."""
    orig = e.orig if isinstance(e, DBAPIError) and e.orig is not None else e
    return " ".join(str(orig).split())


# Dialects whose database is a local file named by the URL's path.
FILE_DIALECTS = ("sqlite", "duckdb")


def resolve_url(text: str, folder: Path) -> URL:
    """Expand ``${VAR}`` placeholders and anchor a relative database file on ``folder``."""
    expanded = expand(text)
    try:
        url = make_url(expanded)
    except ArgumentError:
        raise ValueError(
            f"{text!r} is not a SQLAlchemy URL (e.g. sqlite:///features.db or "
            "postgresql://user@host/db)"
        ) from None
    database = url.database or ""
    if (
        url.get_backend_name() in FILE_DIALECTS
        and database not in ("", ":memory:")
        and not database.startswith("file:")
        and not Path(database).is_absolute()
    ):
        url = url.set(database=str((folder / database).resolve()))
    if url.drivername == "postgresql" and importlib.util.find_spec("psycopg2") is None:
        # A bare postgresql:// means psycopg2 to SQLAlchemy; modelyard installs psycopg 3.
        url = url.set(drivername="postgresql+psycopg")
    return url


def describe(url: URL) -> str:
    """The URL as it may appear in a log or an error: without its password."""
    return url.render_as_string(hide_password=True)


def create_engine(url: URL, read_only: bool = False, **kwargs: Any) -> sa.Engine:
    """A pooled engine; ``read_only`` opens SQLite and DuckDB files read-only, so a
    missing file is an error rather than a new empty database."""
    backend = url.get_backend_name()
    connect_args: dict[str, Any] = {}
    if read_only and backend in FILE_DIALECTS and url.database not in (None, "", ":memory:"):
        if not Path(url.database).exists():
            raise FileNotFoundError(
                f"database file {url.database} does not exist; create it or point the URL "
                "at another database"
            )
        if backend == "sqlite":
            path = quote(url.database)
            url = url.set(database=f"file:{path}?mode=ro", query={"uri": "true"})
        else:
            connect_args["read_only"] = True
    # pool_pre_ping: a connection dropped by the database (restart, idle timeout)
    # is replaced before a request uses it instead of failing that request.
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)
