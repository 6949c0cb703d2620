"""A run's predictions exported for analysis: Parquet or CSV, to a local folder or any
fsspec URI (s3://, gs://...), streamed from the store in chunks.

Filters are parsed, never spliced into SQL: ``column operator value`` where the column
is one of the table's, the operator one of ``= != < <= > >=`` and the value a number,
``true``/``false`` or quoted text; the value is a bound parameter::

    male_percentile > 0.8
    user_id = 'u0000042'
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import sqlalchemy as sa
from fsspec.implementations.local import LocalFileSystem

from modelyard.errors import ModelyardError
from modelyard.store.connection import PredictionStore
from modelyard.store.runs import RunInfo
from modelyard.store.tables import PREDICTED_AT_COLUMN, errors

FORMATS = ("parquet", "csv")
EXPORT_CHUNK_ROWS = 100_000
OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "==": operator.eq,
    "!=": operator.ne,
    "<>": operator.ne,
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
FILTER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<>|<=|>=|=|<|>)\s*(.+?)\s*")
NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


class ExportError(ModelyardError):
    """The export cannot run: a bad filter, format or destination, or no run."""


@dataclass(frozen=True)
class Filter:
    column: str
    op: str
    value: Any

    @classmethod
    def parse(cls, text: str) -> Filter:
        match = FILTER.fullmatch(text)
        if match is None:
            raise ExportError(
                f'--where {text!r}: write column operator value, e.g. "male_percentile > '
                f'0.8" or "user_id = \'u1\'" (operators {" ".join(OPERATORS)})'
            )
        column, op, raw = match.groups()
        return cls(column, op, _value(text, raw))

    def clause(self, table: sa.Table) -> Any:
        if self.column not in table.c:
            raise ExportError(
                f"--where: {table.name} has no column {self.column!r}; its columns are "
                + ", ".join(table.c.keys())
            )
        return OPERATORS[self.op](table.c[self.column], sa.bindparam(None, self.value))


def _value(text: str, raw: str) -> Any:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if NUMBER.fullmatch(raw):
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    raise ExportError(f"--where {text!r}: {raw!r} is not a number, true/false or 'quoted text'")


@dataclass(frozen=True)
class Exported:
    run: RunInfo
    path: str
    rows: int


def destination(out: str, run: RunInfo, fmt: str) -> str:
    """``out`` when it names a file of the format, else ``<out>/<model>-<version>-<run>.<fmt>``."""
    if out.endswith(f".{fmt}"):
        return out
    return f"{out.rstrip('/')}/{run.model}-{run.version}-{run.run_id}.{fmt}"


def arrow_schema(table: sa.Table) -> pa.Schema:
    return pa.schema([(c.name, _arrow_type(c.type)) for c in table.columns])


def _arrow_type(sql_type: sa.types.TypeEngine) -> pa.DataType:
    if isinstance(sql_type, sa.DateTime):
        return pa.timestamp("us", tz="UTC")
    if isinstance(sql_type, sa.Boolean):
        return pa.bool_()
    if isinstance(sql_type, sa.REAL):
        return pa.float32()
    if isinstance(sql_type, sa.Float | sa.Double):
        return pa.float64()
    if isinstance(sql_type, sa.SmallInteger):
        return pa.int16()
    if isinstance(sql_type, sa.BigInteger):
        return pa.int64()
    if isinstance(sql_type, sa.Integer):
        return pa.int32()
    if isinstance(sql_type, sa.Numeric):
        return pa.float64()
    return pa.string()


def _batches(
    store: PredictionStore, table: sa.Table, run: RunInfo, where: Sequence[Filter], chunk_rows: int
) -> Iterator[pd.DataFrame]:
    query = sa.select(table).where(
        table.c.model == run.model,
        table.c.version == run.version,
        table.c.run_id == run.run_id,
        *[f.clause(table) for f in where],
    )
    with errors(store.engine, f"reading {table.name}"), store.engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(query)
        columns = list(result.keys())
        for part in result.partitions(chunk_rows):
            frame = pd.DataFrame.from_records([tuple(r) for r in part], columns=columns)
            at = frame[PREDICTED_AT_COLUMN]
            frame[PREDICTED_AT_COLUMN] = pd.to_datetime(at, utc=True)
            yield frame


def export_run(
    store: PredictionStore, run: RunInfo, out: str, fmt: str = "parquet",
    where: Sequence[Filter] = (), chunk_rows: int = EXPORT_CHUNK_ROWS,
) -> Exported:  # fmt: skip
    """Write the rows of ``run`` that meet ``where`` to ``out`` (see ``destination``)."""
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: use {' or '.join(FORMATS)}")
    table = store.tables.reflect(run.table)
    if table is None:
        raise ExportError(f"run {run.run_id}: its table {run.table} is not in the store")
    for f in where:
        f.clause(table)  # an unknown column is refused before anything is written
    schema = arrow_schema(table)
    path = destination(out, run, fmt)
    try:
        fs, target = fsspec.core.url_to_fs(path)
        if isinstance(fs, LocalFileSystem):
            fs.makedirs(fs._parent(target), exist_ok=True)
        rows = 0
        with fs.open(target, "wb") as handle:
            writer: Any = (
                pq.ParquetWriter(handle, schema) if fmt == "parquet"
                else pa_csv.CSVWriter(handle, schema)
            )  # fmt: skip
            try:
                for frame in _batches(store, table, run, where, chunk_rows):
                    batch = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
                    writer.write_table(batch)
                    rows += len(frame)
            finally:
                writer.close()
    except (OSError, ValueError, pa.ArrowException) as e:
        raise ExportError(f"exporting run {run.run_id} to {path} failed: {e}") from None
    return Exported(run, path, rows)
