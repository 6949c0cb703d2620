"""Drift without labels: how far what a model sees now is from its reference sample.

A declaration names a reference sample (``monitoring.reference``: a Parquet or CSV file
in the model folder, the training features and optionally the training predictions).
Each of its columns is a *feature* watched for drift; a column is found in what the
model saw by name:

- online, in the payload log: an input (or output) tensor of that name, one value per
  row; column ``i`` of a two-dimensional tensor ``T`` is the feature ``T[i]``;
- in batch runs: the query's column or the predictions column of that name (each run
  keeps a uniform sample of them, ``modelyard_drift_samples``).

Per feature, over a window of current values against the reference:

- ``psi``: the Population Stability Index, sum over bins of ``(c - r) * ln(c / r)``,
  ``r`` and ``c`` the reference's and the current share of the bin, each floored at
  ``EPSILON``. A numeric feature is cut in ``BINS`` bins at the reference's deciles
  (``[e_i, e_i+1)``, the outer ones open); a categorical one has a bin per category.
- numeric: ``ks`` and ``ks_pvalue``, scipy's two-sample Kolmogorov-Smirnov test
  (``scipy.stats.ks_2samp``);
- categorical: ``chi2`` and ``chi2_pvalue``, scipy's ``chisquare`` of the current
  counts against the reference's shares (floored at ``EPSILON`` and renormalised, so
  a category the reference never saw is expected, rarely, rather than impossible);
- ``missing``: the share of current rows without a value; ``samples``: the current
  rows the statistics are computed from.

The statistics leave missing values out. A column is categorical when the reference
holds text, booleans or categories, numeric otherwise.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd
import sqlalchemy as sa
from scipy import stats

from modelyard.declarations.monitoring import QualityConfig
from modelyard.errors import QualityError
from modelyard.quality.evaluate import _flat
from modelyard.quality.labels import label_text
from modelyard.quality.tables import KEYS_PER_QUERY, QualityStore
from modelyard.store.runs import RunStatus
from modelyard.store.tables import (
    RUNS_TABLE,
    TIMESTAMP,
    bound_timestamp,
    create_missing,
    driver_executemany,
    now,
)

if TYPE_CHECKING:
    from mlserver.settings import ModelSettings

logger = logging.getLogger("modelyard.quality")

BINS = 10
EPSILON = 1e-4
NUMERIC, CATEGORICAL = "numeric", "categorical"
STATISTICS = ("psi", "ks", "ks_pvalue", "chi2", "chi2_pvalue", "missing", "samples")
# Windows of the payload log: the current UTC day, the current week (from Monday) and
# the last N logged requests; and a batch run against the reference or the run before.
DAY, WEEK, LAST = "day", "week", "last"
RUN, PREVIOUS_RUN = "run", "run:previous"
LAST_ENV = "MODELYARD_DRIFT_LAST"
DEFAULT_LAST = 1000
# At most this many logged requests are read per window (the most recent).
MAX_REQUESTS = int(os.environ.get("MODELYARD_DRIFT_MAX_REQUESTS", "50000"))
# A batch shard keeps a uniform sample of at most this many rows of its inputs and outputs.
SAMPLE_ROWS = int(os.environ.get("MODELYARD_DRIFT_SAMPLE_ROWS", "10000"))
SAMPLES_TABLE = "modelyard_drift_samples"
REFERENCE_SUFFIXES = (".parquet", ".pq", ".csv")
_WINDOW = re.compile(r"(day|week|last:([1-9][0-9]*))")
_COLUMN = re.compile(r"(.+)\[(\d+)\]")


# -- the statistics ----------------------------------------------------------------------
def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    shares = counts / total if total else np.zeros(len(counts))
    return np.maximum(shares, EPSILON)


def psi_from_counts(reference: np.ndarray, current: np.ndarray) -> float:
    r, c = _shares(np.asarray(reference, float)), _shares(np.asarray(current, float))
    return float(np.sum((c - r) * np.log(c / r)))


def numeric_edges(reference: np.ndarray, bins: int = BINS) -> np.ndarray:
    """The inner bin edges of a numeric feature: the reference's quantiles."""
    return np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))


def numeric_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def psi_numeric(reference: np.ndarray, current: np.ndarray, bins: int = BINS) -> float:
    edges = numeric_edges(reference, bins)
    return psi_from_counts(numeric_counts(reference, edges), numeric_counts(current, edges))


def category_counts(
    reference: Sequence[str], current: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    categories = sorted(set(reference) | set(current))
    index = {c: i for i, c in enumerate(categories)}
    counts = np.zeros((2, len(categories)))
    for row, values in enumerate((reference, current)):
        for value in values:
            counts[row, index[value]] += 1
    return categories, counts[0], counts[1]


def psi_categorical(reference: Sequence[str], current: Sequence[str]) -> float:
    _, r, c = category_counts(reference, current)
    return psi_from_counts(r, c)


def chi2_categorical(reference: Sequence[str], current: Sequence[str]) -> tuple[float, float]:
    """scipy's chisquare of the current counts against the reference's shares."""
    _, r, c = category_counts(reference, current)
    shares = _shares(r)
    result = stats.chisquare(c, shares / shares.sum() * c.sum())
    return float(result.statistic), float(result.pvalue)


@dataclass(frozen=True)
class Feature:
    """A reference column, its kind and its values without the missing ones."""

    name: str
    kind: str
    values: np.ndarray  # float for numeric, text for categorical
    missing: float
    edges: np.ndarray | None = None  # numeric: the inner bin edges

    @classmethod
    def of(cls, name: str, column: pd.Series, kind: str | None = None) -> Feature:
        """The feature of a reference column (its kind from its type unless given)."""
        if kind is None:
            dtype = column.dtype
            numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
            kind = NUMERIC if numeric else CATEGORICAL
        values = _values(column, kind)
        missing = (len(column) - len(values)) / len(column) if len(column) else 0.0
        if kind == NUMERIC:
            return cls(name, kind, values, missing, numeric_edges(values))
        return cls(name, kind, values, missing)

    def statistics(self, current: pd.Series) -> dict[str, float]:
        """The drift of ``current`` from this reference (see the module)."""
        values = _values(current, self.kind)
        out = {
            "missing": (len(current) - len(values)) / len(current) if len(current) else math.nan,
            "samples": float(len(values)),
        }
        if not len(values) or not len(self.values):
            return {**out, "psi": math.nan}
        if self.kind == NUMERIC:
            assert self.edges is not None
            ks = stats.ks_2samp(self.values, values)
            counts = numeric_counts(self.values, self.edges), numeric_counts(values, self.edges)
            return {
                **out,
                "psi": psi_from_counts(*counts),
                "ks": float(ks.statistic),
                "ks_pvalue": float(ks.pvalue),
            }
        chi2, p = chi2_categorical(list(self.values), list(values))
        return {
            **out,
            "psi": psi_categorical(list(self.values), list(values)),
            "chi2": chi2,
            "chi2_pvalue": p,
        }


def _values(column: pd.Series, kind: str) -> np.ndarray:
    """The present values of ``column`` as ``kind`` compares them."""
    if kind == NUMERIC:
        numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
        return numbers[np.isfinite(numbers)]
    present = column[column.notna()]
    return np.array([label_text(v) for v in present], dtype=object)


# -- the reference ------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    path: Path
    features: dict[str, Feature]
    rows: int

    @classmethod
    def load(cls, path: Path) -> Reference:
        if path.suffix.lower() not in REFERENCE_SUFFIXES:
            raise QualityError(
                f"monitoring.reference {path.name}: give a .parquet or .csv file of the "
                "training features (and predictions), one column per feature"
            )
        if not path.is_file():
            raise QualityError(
                f"monitoring.reference {path} does not exist; write it where the model is "
                "trained (the training features, and predictions, one column each)"
            )
        try:
            frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
        except Exception as e:
            raise QualityError(f"monitoring.reference {path}: cannot be read: {e}") from e
        if frame.empty or not len(frame.columns):
            raise QualityError(f"monitoring.reference {path} has no rows; write the training data")
        features = {str(c): Feature.of(str(c), frame[c]) for c in frame.columns}
        return cls(path, features, len(frame))


_REFERENCES: dict[tuple[Path, float], Reference] = {}


def reference_of(config: QualityConfig) -> Reference:
    """The model's reference, read once per change of the file."""
    if config.reference is None:
        raise QualityError(
            f"model '{config.model}' declares no monitoring.reference; add e.g. "
            "monitoring: {reference: reference.parquet} (the training features) to its model.yaml"
        )
    path = (config.folder / config.reference).resolve()
    mtime = path.stat().st_mtime if path.exists() else 0.0
    key = (path, mtime)
    if key not in _REFERENCES:
        for older in [k for k in _REFERENCES if k[0] == path]:
            del _REFERENCES[older]  # the file changed: its previous contents go
        _REFERENCES[key] = Reference.load(path)
    return _REFERENCES[key]


# -- windows ------------------------------------------------------------------------------
def parse_window(text: str) -> str:
    if not _WINDOW.fullmatch(text):
        raise QualityError(
            f"window {text!r}: use day, week or last:N (the last N logged requests, e.g. last:1000)"
        )
    return text


def last_window() -> str:
    return f"{LAST}:{int(os.environ.get(LAST_ENV, DEFAULT_LAST))}"


def window_since(window: str, at: datetime) -> datetime | None:
    """When a day or week window (UTC) began; None for last:N."""
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == DAY:
        return day
    if window == WEEK:
        return day - timedelta(days=day.weekday())
    return None


# -- what the model saw ------------------------------------------------------------------
def tensor_columns(tensors: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The feature columns of V2 tensors (JSON): a one-column tensor by its name, column
    ``i`` of a two-dimensional one as ``name[i]``."""
    columns: dict[str, list[Any]] = {}
    for tensor in tensors:
        name = tensor.get("name")
        if not isinstance(name, str):
            continue
        data = _flat(tensor.get("data"))
        shape = [int(s) for s in tensor.get("shape") or [len(data)]]
        rows = shape[0] if shape else 1
        width = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if rows * width != len(data):
            continue  # cut by the size cap, or not a tensor this reads
        if width == 1:
            columns[name] = list(data)
        else:
            for i in range(width):
                columns[f"{name}[{i}]"] = data[i::width]
    return columns


Parsed = dict[str, list[Any]]  # one logged request's feature columns, all of one length


def parse_payload(request: str, response: str, names: Sequence[str]) -> Parsed:
    """The columns ``names`` of one logged (request, response), a value per row (None
    where the payload does not carry the feature)."""
    try:
        found = tensor_columns(orjson.loads(response).get("outputs") or [])
        found.update(tensor_columns(orjson.loads(request).get("inputs") or []))
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return {name: [] for name in names}
    rows = max((len(v) for v in found.values()), default=0)
    out = {}
    for name in names:
        values = found.get(name)
        out[name] = values if values is not None and len(values) == rows else [None] * rows
    return out


def frame_of(parsed: Iterable[Parsed], names: Sequence[str]) -> pd.DataFrame:
    parts: dict[str, list[Any]] = {name: [] for name in names}
    for columns in parsed:
        for name in names:
            parts[name] += columns[name]
    return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in parts.items()})


def payload_frame(payloads: Iterable[tuple[str, str]], names: Sequence[str]) -> pd.DataFrame:
    """One row per row of each logged (request, response), the columns ``names``
    (missing where a payload does not carry the feature)."""
    return frame_of((parse_payload(req, resp, names) for req, resp in payloads), names)


class PayloadCache:
    """The parsed columns of logged requests, by request id: a logged request never
    changes, so a refresh reads and parses only the requests logged since the last one."""

    def __init__(self) -> None:
        self.parsed: dict[tuple[str, str, str], Parsed] = {}  # (model, version, id) -> columns
        self.names: dict[tuple[str, str], tuple[str, ...]] = {}

    def windows(
        self, store: QualityStore, model: str, version: str, windows: Sequence[str],
        names: Sequence[str], at: datetime | None = None,
    ) -> dict[str, pd.DataFrame]:  # fmt: skip
        """A frame of the columns ``names`` per window."""
        if self.names.get((model, version)) != tuple(names):  # the reference changed
            self.parsed = {k: v for k, v in self.parsed.items() if k[:2] != (model, version)}
            self.names[(model, version)] = tuple(names)
        ids = {w: logged_ids(store, model, version, w, at) for w in windows}
        wanted = {i for found in ids.values() for i in found}
        missing = [i for i in wanted if (model, version, i) not in self.parsed]
        for request_id, request, response in logged_payloads(store, model, missing):
            self.parsed[(model, version, request_id)] = parse_payload(request, response, names)
        for key in [k for k in self.parsed if k[:2] == (model, version) and k[2] not in wanted]:
            del self.parsed[key]  # out of every window: forgotten
        return {
            w: frame_of(
                (self.parsed[(model, version, i)] for i in found
                 if (model, version, i) in self.parsed),
                names,
            )
            for w, found in ids.items()
        }  # fmt: skip


def logged_ids(
    store: QualityStore, model: str, version: str, window: str, at: datetime | None = None
) -> list[str]:
    """The ids of the model version's logged requests in ``window`` (at most
    MAX_REQUESTS, the most recent), uncut ones only."""
    p = store.payloads.c
    query = sa.select(p.request_id).where(
        p.model == model, p.version == version, p.truncated == sa.false()
    )
    since = window_since(window, at or now())
    if since is not None:
        query = query.where(p.logged_at >= since)
        limit = MAX_REQUESTS
    else:
        limit = min(int(window.split(":")[1]), MAX_REQUESTS)
    query = query.order_by(p.logged_at.desc(), p.request_id.desc()).limit(limit)
    with store.errors("reading logged payloads"), store.engine.connect() as conn:
        if not sa.inspect(conn).has_table(store.payloads.name):
            return []
        return list(conn.execute(query).scalars())


def logged_payloads(
    store: QualityStore, model: str, ids: Sequence[str]
) -> Iterator[tuple[str, str, str]]:
    """(request id, request, response) of the logged requests ``ids``."""
    p = store.payloads.c
    for start in range(0, len(ids), KEYS_PER_QUERY):
        chunk = ids[start : start + KEYS_PER_QUERY]
        query = sa.select(p.request_id, p.request, p.response).where(
            p.model == model, p.request_id.in_(chunk)
        )
        with store.errors("reading logged payloads"), store.engine.connect() as conn:
            yield from ((r.request_id, r.request, r.response) for r in conn.execute(query))


def samples_table(metadata: sa.MetaData) -> sa.Table:
    """A uniform sample of each batch run shard's inputs and outputs, one JSON object per row."""
    text = sa.Text
    return sa.Table(
        SAMPLES_TABLE,
        metadata,
        sa.Column("model", text, primary_key=True),
        sa.Column("version", text, primary_key=True),
        sa.Column("run_id", text, primary_key=True),
        sa.Column("shard", sa.Integer, primary_key=True),
        sa.Column("row", sa.Integer, primary_key=True),
        sa.Column("data", text, nullable=False),
        sa.Column("written_at", TIMESTAMP, nullable=False),
    )


class BatchSample:
    """Bottom-k sampling of a shard's rows: each row gets a random key and the
    SAMPLE_ROWS rows with the smallest are kept, a uniform sample of the shard."""

    def __init__(self, columns: Sequence[str], size: int = SAMPLE_ROWS, seed: int | None = None):
        self.columns = list(columns)
        self.size = size
        self.random = np.random.default_rng(seed)
        # Candidates: the sample and the rows drawn since it was last cut to size.
        # Cutting (a sort) once they are twice the sample's size, not at every chunk,
        # took a sixth of a scoring thread's time out of a run.
        self._pool = pd.DataFrame()

    @classmethod
    def of(cls, settings: ModelSettings) -> BatchSample | None:
        """The sample a batch run of ``settings`` keeps: None without a reference."""
        config = QualityConfig.from_settings(settings)
        if config is None or config.reference is None:
            return None
        try:
            reference = reference_of(config)
        except QualityError as e:  # the run's predictions matter more than its drift
            logger.warning("model '%s': no drift sample kept: %s", config.model, e)
            return None
        return cls(list(reference.features))

    @property
    def rows(self) -> pd.DataFrame:
        """The sample: the ``size`` rows with the smallest keys so far."""
        self._cut(self.size)
        return self._pool

    def add_scored(self, inputs: pd.DataFrame, outputs: pd.DataFrame, key: str) -> None:
        """A chunk's inputs and the predictions made of them (joined by ``key``)."""
        wanted = [c for c in outputs.columns if c in self.columns and c != key]
        # Bottom-k: once the sample is full, only a row drawn below its largest key can
        # enter, so the keys are drawn first and only those rows joined and kept (a
        # few per chunk, where every row of a chunk was copied, joined and sorted).
        draws = self.random.random(len(inputs))
        if self.size and len(self._pool) >= self.size:
            keys = self._pool["__key"].to_numpy()
            below = draws < np.partition(keys, self.size - 1)[self.size - 1]
            inputs, draws = inputs[below], draws[below]
        inputs = inputs[[c for c in inputs.columns if c in self.columns or c == key]]
        inputs = inputs.assign(__key=draws)
        if wanted and key in outputs.columns and key in inputs.columns:
            inputs = inputs.merge(outputs[[key, *wanted]], on=key, how="inner",
                                  suffixes=("", " (output)"))  # fmt: skip
        self.add(inputs)

    def add(self, frame: pd.DataFrame) -> None:
        present = [c for c in self.columns if c in frame.columns]
        if not present or frame.empty:
            return
        part = frame[present].copy()
        drawn = frame["__key"].to_numpy() if "__key" in frame.columns else None
        part["__key"] = self.random.random(len(part)) if drawn is None else drawn
        self._pool = pd.concat([self._pool, part]) if not self._pool.empty else part
        self._cut(2 * self.size)

    def _cut(self, most: int) -> None:
        if len(self._pool) > most:
            self._pool = self._pool.nsmallest(self.size, "__key")

    def write(self, engine: sa.Engine, model: str, version: str, run_id: str, shard: int) -> None:
        table = samples_table(sa.MetaData())
        rows = self.rows.drop(columns="__key", errors="ignore")
        dialect = engine.dialect
        written = bound_timestamp(dialect, now())
        # The driver's own executemany: SQLAlchemy's parameter handling per row took
        # two thirds of the write (0.1 s for 10,000 rows, at the end of every shard).
        insert = table.insert().compile(dialect=dialect)
        names = ("model", "version", "run_id", "shard", "row", "data", "written_at")
        records = [
            (model, version, run_id, shard, i,
             orjson.dumps(row, default=_jsonable, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
             written)
            for i, row in enumerate(rows.to_dict("records"))
        ]  # fmt: skip
        create_missing(engine, table.metadata)  # the run's shards write at once
        with engine.begin() as conn:
            conn.execute(
                table.delete().where(
                    table.c.model == model, table.c.version == version,
                    table.c.run_id == run_id, table.c.shard == shard,
                )
            )  # fmt: skip
            driver_executemany(conn, insert, names, records)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return str(value)


@dataclass(frozen=True)
class Run:
    version: str
    run_id: str


def complete_runs(store: QualityStore, model: str) -> list[Run]:
    """The model's complete batch runs, the last to finish first."""
    r = store.store.runs.c
    with store.errors("reading its runs"), store.engine.connect() as conn:
        if not sa.inspect(conn).has_table(RUNS_TABLE):
            return []
        rows = conn.execute(
            sa.select(r.version, r.run_id)
            .where(r.model == model, r.status == RunStatus.COMPLETE)
            .order_by(r.finished_at.desc(), r.run_id.desc())
        ).all()
    return [Run(row.version, row.run_id) for row in rows]


def run_frame(store: QualityStore, model: str, run: Run, names: Sequence[str]) -> pd.DataFrame:
    """The sampled rows of a batch run (all its shards), the columns ``names``."""
    table = samples_table(sa.MetaData())
    with store.errors("reading batch samples"), store.engine.connect() as conn:
        if not sa.inspect(conn).has_table(SAMPLES_TABLE):
            return pd.DataFrame({n: [] for n in names})
        data = conn.execute(
            sa.select(table.c.data).where(
                table.c.model == model, table.c.version == run.version,
                table.c.run_id == run.run_id,
            )
        ).scalars().all()  # fmt: skip
    rows = [orjson.loads(d) for d in data]
    return pd.DataFrame({n: pd.Series([row.get(n) for row in rows], dtype=object) for n in names})


# -- drift -------------------------------------------------------------------------------
COLUMNS = ["source", "window", "version", "feature", "kind", *STATISTICS]


def drift_rows(
    reference: Mapping[str, Feature], current: pd.DataFrame, **key: str
) -> list[dict[str, Any]]:
    """A row of statistics per feature of ``reference`` found in ``current``."""
    rows = []
    for name, feature in reference.items():
        if name not in current.columns:
            continue
        column = current[name]
        if not column.notna().any():
            # Not carried by these payloads at all (another model's outputs, an
            # input not sent): nothing to compare, rather than 100% missing.
            continue
        rows.append({**key, "feature": name, "kind": feature.kind, **feature.statistics(column)})
    return rows


Currents = dict[tuple[str, str], pd.DataFrame]


def online_drift(
    config: QualityConfig, store: QualityStore, windows: Sequence[str], version: str | None = None,
    at: datetime | None = None, currents: Currents | None = None,
    cache: PayloadCache | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """The served version's logged requests in each of ``windows`` against the
    reference (``currents`` gets what they were: (source, window) -> frame; ``cache``
    keeps what was parsed for the next call)."""
    reference = reference_of(config).features
    version = version or config.version
    rows = []
    frames = (cache or PayloadCache()).windows(
        store, config.model, version, windows, list(reference), at
    )
    for window, current in frames.items():
        if currents is not None:
            currents[("online", window)] = current
        rows += drift_rows(reference, current, source="online", window=window, version=version)
    return rows


def batch_drift(
    config: QualityConfig, store: QualityStore, version: str | None = None,
    currents: Currents | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """The latest complete batch run (of ``version`` if given) against the reference,
    and against the complete run before it."""
    reference = reference_of(config).features
    runs = complete_runs(store, config.model)
    if version is not None:
        runs = [run for run in runs if run.version == version]
    if not runs:
        return []
    names = list(reference)
    latest = run_frame(store, config.model, runs[0], names)
    if currents is not None:
        currents[("batch", RUN)] = latest
    key = dict(source="batch", version=runs[0].version)
    rows = drift_rows(reference, latest, window=RUN, **key)
    if len(runs) > 1:
        before = run_frame(store, config.model, runs[1], names)
        # The previous run as the reference, each feature of the reference's kind.
        previous = {
            n: Feature.of(n, before[n], f.kind)
            for n, f in reference.items()
            if before[n].notna().any()
        }
        rows += drift_rows(previous, latest, window=PREVIOUS_RUN, **key)
    return rows


def drift_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """The rows as a table, the most drifted (highest PSI) first in each source and window."""
    frame = pd.DataFrame(list(rows), columns=COLUMNS)
    if frame.empty:
        return frame
    frame["_order"] = frame["psi"].fillna(-1.0)
    frame = frame.sort_values(["source", "window", "_order"], ascending=[False, True, False])
    return frame.drop(columns="_order").reset_index(drop=True)


def drift(
    config: QualityConfig, store: QualityStore, windows: Sequence[str], version: str | None = None,
    currents: Currents | None = None, cache: PayloadCache | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Online drift over ``windows`` and the latest batch run's, ranked."""
    rows = online_drift(config, store, windows, version, currents=currents, cache=cache)
    rows += batch_drift(config, store, version, currents)
    return drift_frame(rows)


def statistics_of(frame: pd.DataFrame) -> Iterator[tuple[dict[str, str], str, float]]:
    """(labels, statistic, value) of each defined number of a drift table."""
    for row in frame.to_dict("records"):
        labels = dict(version=row["version"], feature=row["feature"], window=row["window"])
        for name in STATISTICS:
            value = row.get(name)
            if value is not None and not pd.isna(value):
                yield labels, name, float(value)
