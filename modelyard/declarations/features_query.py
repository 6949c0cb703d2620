"""`modelyard validate` on a declaration's features: ``features.sql`` run against its
source with ``LIMIT 0`` (no rows read), and the columns it returns held to the model's
input (how many, of which type) before a batch run or a request finds out.

The model's input is the declared signature's single input (``inputs: [{name: input-0,
datatype: FP64, shape: [-1, 4]}]``: 4 numeric columns), else numbers for sklearn and
xgboost models. A column whose type the database does not say (a SQLite expression)
is not judged. A source that cannot be reached here (a deployment's database) is not
checked.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from modelyard.declarations.interpolate import MissingVariable, expand
from modelyard.declarations.load import read_declaration
from modelyard.errors import InvalidModelFolder, Problem
from modelyard.store.databases import create_engine, database_message, describe, resolve_url

logger = logging.getLogger("modelyard.declarations")

# Runtimes whose input is a numeric tensor when no signature says otherwise.
NUMERIC_RUNTIMES = ("sklearn", "xgboost", "lightgbm", "catboost", "onnx")
NUMERIC_TYPES = re.compile(r"INT|REAL|FLOA|DOUB|NUM|DEC|BOOL|SERIAL", re.IGNORECASE)
TEXT_TYPES = re.compile(r"TEXT|CHAR|CLOB|STRING|UUID|JSON", re.IGNORECASE)
PROBE_VIEW = "modelyard_features_probe"


def column_types(engine: sa.Engine, sql: str) -> list[tuple[str, str | None]]:
    """The (name, database type) of each column ``sql`` returns, from running it with
    LIMIT 0; the type is None where the database does not say."""
    limited = f"SELECT * FROM ({sql}) AS features LIMIT 0"
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            # SQLite's cursor has no types: a temporary view of the query has the
            # declared types of the columns it selects.
            conn.exec_driver_sql(f"CREATE TEMP VIEW {PROBE_VIEW} AS {limited}")
            try:
                rows = conn.exec_driver_sql(f"PRAGMA temp.table_info({PROBE_VIEW})").all()
            finally:
                conn.exec_driver_sql(f"DROP VIEW temp.{PROBE_VIEW}")
            return [(r[1], r[2] or None) for r in rows]
        # Through text(), as the runtime runs it: a '%' in the query is not a placeholder.
        description = conn.execute(sa.text(limited)).cursor.description
        return [(c[0], _type_name(c)) for c in description]


def _type_name(column: Any) -> str | None:
    shown = getattr(column, "type_display", None)  # psycopg 3
    if shown:
        return str(shown)
    code = column[1]
    return None if code is None or isinstance(code, int) else str(code)


def kind(type_name: str | None) -> str | None:
    """'number', 'text' or None (not told, or neither)."""
    if type_name is None:
        return None
    if NUMERIC_TYPES.search(type_name):
        return "number"
    if TEXT_TYPES.search(type_name):
        return "text"
    return None


def features_query_problems(path: Path) -> list[Problem]:
    """What is wrong with the declaration's features query against its source and the
    model's input; [] when it has no features or they fit."""
    try:
        decl = read_declaration(path)
    except InvalidModelFolder as e:
        return e.problems
    features = decl.get("features")
    if not isinstance(features, dict):
        return []
    file = str(path)
    try:
        sql = (path.parent / expand(features["sql"])).read_text().strip().rstrip(";")
        url = resolve_url(features["source"], path.parent)
    except (OSError, KeyError, ValueError, MissingVariable) as e:
        return [Problem(file, "/features", f"cannot run the features query: {e}")]
    try:
        engine = create_engine(url, read_only=True)
    except FileNotFoundError as e:
        logger.info("%s: features query not checked: %s", file, e)
        return []  # the source is where the model runs (a deployment's database)
    try:
        try:
            engine.connect().close()
        except SQLAlchemyError as e:
            logger.info("%s: features query not checked: %s", file, database_message(e))
            return []
        columns = column_types(engine, sql)
    except SQLAlchemyError as e:
        return [
            Problem(
                file,
                "/features/sql",
                f"{features['sql']} does not run on {describe(url)}: {database_message(e)}",
            )
        ]
    finally:
        engine.dispose()
    return [Problem(file, p, m) for p, m in fit_problems(decl, columns)]


def fit_problems(
    decl: dict[str, Any], columns: list[tuple[str, str | None]]
) -> list[tuple[str, str]]:
    """(pointer, message) for each way the query's columns do not fit the model."""
    features = decl["features"]
    key, sql = features["key"], features["sql"]
    types = dict(columns)
    names = ", ".join(types)
    if key not in types:
        return [("/features/key", f"{sql} returns no column {key!r} (it returns {names})")]
    chosen = features.get("columns")
    if chosen is not None:
        absent = [c for c in chosen if c not in types]
        if absent:
            return [
                (
                    "/features/columns",
                    f"{', '.join(map(repr, absent))} not returned by {sql} (it returns {names})",
                )
            ]
    runtime = decl.get("runtime")
    if runtime == "predictor":
        return []  # the class takes the query's frame as it comes
    inputs = chosen if chosen is not None else [c for c in types if c != key]
    declared = decl.get("inputs") or []
    tensor = declared[0] if len(declared) == 1 else None
    problems: list[tuple[str, str]] = []
    where = "/features/columns" if chosen is not None else "/features/sql"
    if tensor is not None:
        shape = tensor.get("shape") or []
        width = shape[1] if len(shape) == 2 and shape[1] > 0 else None
        if width is not None and width != len(inputs):
            problems.append(
                (
                    where,
                    f"{sql} gives {len(inputs)} input column(s) ({', '.join(inputs)}) but the "
                    f"model's input {tensor['name']!r} takes {width} (shape {shape}); select "
                    f"{width} columns besides {key!r} or list them in features.columns",
                )
            )
    numeric = tensor["datatype"] != "BYTES" if tensor is not None else runtime in NUMERIC_RUNTIMES
    if numeric:
        for name in inputs:
            if kind(types[name]) == "text":
                problems.append(
                    (
                        where,
                        f"column {name!r} of {sql} is {types[name]}, but the model's input "
                        f"takes numbers; cast it in the query or leave it out of "
                        "features.columns",
                    )
                )
    return problems
