"""Labels joined with the predictions they judge, scored per model version and window.

Which prediction a label judges:
- an entity's label (``user_id``...): the prediction that was current when the truth
  was observed, i.e. that of the version's latest batch run completed at or before
  ``observed_at`` (what the lookup model answered then); a label observed before the
  version's first run judges that first run's prediction;
- a request's label: the logged response of that request (``row`` of its batch).

Windows are of ``observed_at``: the day (UTC) and the week (from Monday, UTC) in which
the truth became known. A window's metrics are stored with its counts and with what
they were computed from (its labels' count and last change, the runs current during
it, its requests' payloads), and recomputed only when that changes: a label of that
window arriving (late labels), a batch run completing, a payload logged for a
labelled request. Which windows to look at comes from the time stamps of what was
written since the last refresh; rows stamped by another machine's clock, or committed
late, are looked at again for ``LOOKBACK`` after it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pandas as pd
import sqlalchemy as sa

from modelyard.declarations.monitoring import CLASSIFICATION, QualityConfig
from modelyard.errors import QualityError
from modelyard.quality import scoring
from modelyard.quality.labels import label_text
from modelyard.quality.tables import ENTITY, REQUEST, QualityStore, upsert
from modelyard.store.runs import RunStatus
from modelyard.store.tables import RUNS_TABLE, dialect_insert, now, utc

logger = logging.getLogger("modelyard.quality")

DAY, WEEK = "day", "week"
WINDOWS = {DAY: timedelta(days=1), WEEK: timedelta(days=7)}
LOOKBACK = timedelta(minutes=5)
ALL_VERSIONS = "*"
SCORE = "score:"  # column prefix of a class's score in joined frames


def window_start(kind: str, times: pd.Series) -> pd.Series:
    """The start of the ``kind`` window (UTC) of each of ``times``."""
    day = times.dt.floor("D")
    if kind == DAY:
        return day
    return day - pd.to_timedelta(day.dt.weekday, unit="D")


@dataclass(frozen=True)
class Run:
    version: str
    run_id: str
    table: str
    finished_at: datetime


@dataclass(frozen=True)
class Window:
    kind: str
    start: pd.Timestamp

    @property
    def end(self) -> pd.Timestamp:
        return self.start + WINDOWS[self.kind]


class Evaluator:
    """Keeps the stored metrics of one model up to date with its labels."""

    def __init__(self, config: QualityConfig, store: QualityStore):
        self.config = config
        self.store = store
        self.model = config.model

    # -- what changed ------------------------------------------------------------------
    def refresh(self) -> int:
        """Recompute the windows whose inputs changed since the last refresh; returns
        how many (version, window) pairs were recomputed."""
        self.config.require_task()
        self.store.ensure()
        started = now()
        seen = self.store.seen_until(self.model)
        runs = self.runs()
        versions = sorted(set(runs) | set(self._payload_versions()))
        dirty = self._dirty(seen, runs)
        recomputed = 0
        for version in versions:
            times = np.concatenate(
                [dirty.get(ALL_VERSIONS, _NO_TIMES), dirty.get(version, _NO_TIMES)]
            )
            if not len(times):
                continue
            # Candidates from the time stamps; recomputed only if what they are
            # computed from differs from what their stored metrics were.
            version_runs = runs.get(version, [])
            inputs = {w: self._inputs(version, version_runs, w) for w in _windows(pd.Series(times))}
            known = self._stored_inputs(version)
            changed = [w for w, text in inputs.items() if known.get((w.kind, w.start)) != text]
            if not changed:
                continue
            frame = self.joined(version, version_runs, _ranges(changed))
            self._save(version, {w: inputs[w] for w in changed}, frame)
            recomputed += len(changed)
        self._seen(started)
        return recomputed

    def _inputs(self, version: str, runs: Sequence[Run], window: Window) -> str:
        """What the metrics of ``window`` depend on, in short: its labels (how many,
        the last change), the runs current during it, the payloads of its requests."""
        lab, p = self.store.labels.c, self.store.payloads.c
        start, end = window.start.to_pydatetime(), window.end.to_pydatetime()
        in_window = (lab.model == self.model, lab.observed_at >= start, lab.observed_at < end)
        with self.store.errors("reading labels"), self.store.engine.connect() as conn:
            labels = conn.execute(
                sa.select(sa.func.count(), sa.func.max(lab.received_at)).where(*in_window)
            ).one()
            payloads = conn.execute(
                sa.select(sa.func.count(), sa.func.max(p.logged_at))
                .select_from(self._request_join())
                .where(*in_window, p.version == version)
            ).one()
        current = [
            f"{r.run_id}@{r.finished_at.isoformat()}"
            for i, r in enumerate(runs)
            if (i + 1 == len(runs) or runs[i + 1].finished_at > start)
            and (i == 0 or r.finished_at < end)
        ]
        parts = [
            labels[0], _stamp(labels[1]), payloads[0], _stamp(payloads[1]), *current,
        ]  # fmt: skip
        return " ".join(str(part) for part in parts)

    def _stored_inputs(self, version: str) -> dict[tuple[str, pd.Timestamp], str]:
        w = self.store.windows.c
        with self.store.errors("reading metrics"), self.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(w.window, w.start, w.inputs).where(
                    w.model == self.model, w.version == version
                )
            ).all()
        return {(kind, pd.Timestamp(utc(start))): inputs for kind, start, inputs in rows}

    def runs(self) -> dict[str, list[Run]]:
        """The complete batch runs of the model, per version, oldest first."""
        prediction_store = self.store.store
        r = prediction_store.runs.c
        with self.store.errors("reading its runs"), self.store.engine.connect() as conn:
            if not sa.inspect(conn).has_table(RUNS_TABLE):
                return {}
            rows = conn.execute(
                sa.select(r.version, r.run_id, r.table_name, r.finished_at)
                .where(r.model == self.model, r.status == RunStatus.COMPLETE)
                .order_by(r.finished_at, r.run_id)
            ).all()
        runs: dict[str, list[Run]] = defaultdict(list)
        for row in rows:
            runs[row.version].append(
                Run(row.version, row.run_id, row.table_name, utc(row.finished_at))
            )
        return dict(runs)

    def _payload_versions(self) -> list[str]:
        p, lab = self.store.payloads.c, self.store.labels.c
        with self.store.errors("reading payloads"), self.store.engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(p.version)
                    .distinct()
                    .select_from(self._request_join())
                    .where(p.model == self.model, lab.model == self.model)
                ).scalars()
            )

    def _request_join(self) -> Any:
        p, lab = self.store.payloads, self.store.labels
        return p.join(
            lab,
            sa.and_(lab.c.model == p.c.model, lab.c.kind == REQUEST, lab.c.key == p.c.request_id),
        )

    def _dirty(self, seen: datetime | None, runs: dict[str, list[Run]]) -> dict[str, np.ndarray]:
        """The observed_at of the labels whose windows need recomputing, per version
        (ALL_VERSIONS: every version's)."""
        lab = self.store.labels.c
        p = self.store.payloads.c
        found: dict[str, list[np.ndarray]] = defaultdict(list)
        with self.store.errors("reading labels"), self.store.engine.connect() as conn:

            def times(query: Any) -> np.ndarray:
                return _utc_array(conn.execute(query).scalars().all())

            observed = sa.select(lab.observed_at).where(lab.model == self.model)
            if seen is None:
                found[ALL_VERSIONS].append(times(observed))
                return {v: np.concatenate(t) for v, t in found.items()}
            since = seen - LOOKBACK
            found[ALL_VERSIONS].append(times(observed.where(lab.received_at > since)))
            entity = observed.where(lab.kind == ENTITY)
            for version, version_runs in runs.items():
                for i, run in enumerate(version_runs):
                    if run.finished_at <= since:
                        continue
                    # A new run judges the labels observed from its end on; the first
                    # run of a version, every label before it too.
                    query = entity if i == 0 else entity.where(lab.observed_at >= run.finished_at)
                    found[version].append(times(query))
                    break
            rows = conn.execute(
                sa.select(p.version, lab.observed_at)
                .select_from(self._request_join())
                .where(p.model == self.model, p.logged_at > since)
            ).all()
            for version, when in rows:
                found[version].append(_utc_array([when]))
        return {v: np.concatenate(t) for v, t in found.items()}

    # -- the join ----------------------------------------------------------------------
    def joined(
        self, version: str, runs: Sequence[Run], ranges: Sequence[tuple[datetime, datetime]]
    ) -> pd.DataFrame:
        """Every label observed in ``ranges`` with the prediction of ``version`` it
        judges: observed_at, label, predicted (the prediction column, if declared) and
        one ``score:<class>`` column per declared class."""
        parts = [self._batch(version, runs, ranges), self._online(version, ranges)]
        frame = pd.concat([p for p in parts if not p.empty] or [_empty(self.config)])
        frame["observed_at"] = pd.to_datetime(frame["observed_at"], utc=True)
        return frame.reset_index(drop=True)

    def _batch(
        self, version: str, runs: Sequence[Run], ranges: Sequence[tuple[datetime, datetime]]
    ) -> pd.DataFrame:
        config = self.config
        if not runs or config.key is None:
            return _empty(config)
        lab = self.store.labels
        frames = []
        for i, run in enumerate(runs):
            # The run is current from its end until the next run's (the first: from
            # the beginning of time).
            lo = run.finished_at if i else None
            hi = runs[i + 1].finished_at if i + 1 < len(runs) else None
            table = self.store.store.tables.reflect(run.table)
            if table is None:
                continue
            absent = [c for c in [config.key, *config.columns] if c not in table.c]
            if absent:
                raise QualityError(
                    f"model '{self.model}' version {version}: table {run.table} has no column "
                    f"{', '.join(repr(c) for c in absent)}, which monitoring names; name "
                    f"predictions.columns ({', '.join(c.name for c in table.c)})"
                )
            key = table.c[config.key]
            key_text = key if isinstance(key.type, sa.String) else sa.cast(key, sa.Text)
            join = table.join(
                lab,
                sa.and_(
                    lab.c.model == self.model,
                    lab.c.kind == ENTITY,
                    lab.c.row == 0,
                    lab.c.key == key_text,
                ),
            )
            select = (
                sa.select(lab.c.observed_at, lab.c.label, *[table.c[c] for c in config.columns])
                .select_from(join)
                .where(
                    table.c.model == self.model,
                    table.c.version == version,
                    table.c.run_id == run.run_id,
                )
            )
            for start, end in ranges:
                low = max(start, lo) if lo is not None else start
                high = min(end, hi) if hi is not None else end
                if low >= high:
                    continue
                query = select.where(lab.c.observed_at >= low, lab.c.observed_at < high)
                with (
                    self.store.errors(f"joining labels with {run.table}"),
                    self.store.engine.connect() as conn,
                ):
                    rows = conn.execute(query).all()
                if rows:
                    frames.append(self._frame(rows))
        return pd.concat(frames) if frames else _empty(config)

    def _frame(self, rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
        config = self.config
        columns = list(zip(*rows, strict=True))
        frame = {"observed_at": columns[0], "label": columns[1]}
        values = dict(zip(config.columns, columns[2:], strict=True))
        frame.update(self._predictions(values))
        return pd.DataFrame(frame)

    def _predictions(self, values: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
        config = self.config
        out: dict[str, Any] = {}
        if config.prediction is not None:
            out["predicted"] = list(values[config.prediction])
        for cls, column in config.scores.items():
            out[SCORE + cls] = pd.to_numeric(pd.Series(values[column]), errors="coerce").to_numpy()
        return out

    def _online(self, version: str, ranges: Sequence[tuple[datetime, datetime]]) -> pd.DataFrame:
        p, lab = self.store.payloads.c, self.store.labels.c
        select = (
            sa.select(lab.observed_at, lab.label, lab.row, p.response)
            .select_from(self._request_join())
            .where(p.model == self.model, p.version == version, p.truncated == sa.false())
        )
        rows: list[Any] = []
        with self.store.errors("joining labels with payloads"), self.store.engine.connect() as conn:
            for start, end in ranges:
                query = select.where(lab.observed_at >= start, lab.observed_at < end)
                rows += conn.execute(query).all()
        found = []
        for observed, label, row, response in rows:
            values = response_values(response, self.config.columns, row)
            if values is not None:
                found.append((observed, label, *[values[c] for c in self.config.columns]))
        return self._frame(found) if found else _empty(self.config)

    # -- the metrics -------------------------------------------------------------------
    def metrics(self, frame: pd.DataFrame) -> list[scoring.Metric]:
        """The metrics of the rows of ``frame`` (one window's); rows whose prediction
        is missing (an unknown entity, a null output) are left out."""
        config = self.config
        frame = frame.dropna(subset=[c for c in frame.columns if c != "label"])
        if config.task == CLASSIFICATION:
            labels = frame["label"].tolist()
            scores = {c: frame[SCORE + c].to_numpy() for c in config.scores} or None
            if config.prediction is not None:
                predicted = [label_text(v) for v in frame["predicted"]]
            else:
                classes = list(config.scores)
                matrix = np.column_stack([frame[SCORE + c].to_numpy() for c in classes])
                # The highest score wins; a tie goes to the class declared first.
                predicted = [classes[i] for i in np.argmax(matrix, axis=1)] if len(frame) else []
            extra = sorted((set(labels) | set(predicted)) - set(config.scores))
            return scoring.classification(labels, predicted, [*config.scores, *extra], scores)
        labels_f = pd.to_numeric(frame["label"], errors="coerce")
        predicted_f = pd.to_numeric(frame["predicted"], errors="coerce")
        keep = labels_f.notna() & predicted_f.notna()
        return scoring.regression(labels_f[keep].tolist(), predicted_f[keep].tolist())

    def _save(self, version: str, windows: dict[Window, str], frame: pd.DataFrame) -> None:
        """Replace the metrics of ``windows`` (with what they were computed from) by
        those of their rows of ``frame``; a window without rows keeps no metrics."""
        computed_at = now()
        w, m = self.store.windows, self.store.metrics
        window_rows, metric_rows = [], []
        observed = frame["observed_at"]
        for window, inputs in windows.items():
            rows = frame[(observed >= window.start) & (observed < window.end)]
            key = dict(model=self.model, version=version, window=window.kind,
                       start=window.start.to_pydatetime())  # fmt: skip
            results = self.metrics(rows) if not rows.empty else []
            samples = max((r.samples for r in results if r.cls == scoring.OVERALL), default=0)
            window_rows.append(
                {**key, "samples": samples, "inputs": inputs, "computed_at": computed_at}
            )
            metric_rows += [
                {**key, "metric": r.name, "class": r.cls, "value": r.value, "samples": r.samples}
                for r in results
            ]
        keys = ("model", "version", "window", "start")
        with self.store.errors("saving metrics"), self.store.engine.begin() as conn:
            # A window's classes may change: its metrics are replaced, not merged.
            for row in window_rows:
                conn.execute(m.delete().where(*[m.c[k] == row[k] for k in keys]))
            conn.execute(upsert(self.store.dialect, w), window_rows)
            if metric_rows:
                conn.execute(dialect_insert(self.store.dialect, m), metric_rows)

    def stored(
        self, version: str | None = None, kind: str | None = None, since: datetime | None = None
    ) -> pd.DataFrame:
        """The stored metrics, one row per (version, window, start, metric, class) with
        the window's samples and when it was computed, oldest window first."""
        w, m = self.store.windows.c, self.store.metrics.c
        query = (
            sa.select(
                m.version, m.window, m.start, w.samples.label("window_samples"), w.computed_at,
                m.metric, m["class"].label("class"), m.value, m.samples,
            )
            .select_from(
                self.store.metrics.join(
                    self.store.windows,
                    sa.and_(w.model == m.model, w.version == m.version, w.window == m.window,
                            w.start == m.start),
                )
            )
            .where(m.model == self.model)
            .order_by(m.version, m.window, m.start, m.metric, m["class"])
        )  # fmt: skip
        if version is not None:
            query = query.where(m.version == version)
        if kind is not None:
            query = query.where(m.window == kind)
        if since is not None:
            query = query.where(m.start >= since)
        with self.store.errors("reading metrics"), self.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        frame = pd.DataFrame(
            rows,
            columns=["version", "window", "start", "window_samples", "computed_at", "metric",
                     "class", "value", "samples"],
        )  # fmt: skip
        for column in ("start", "computed_at"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
        return frame

    def _seen(self, started: datetime) -> None:
        with self.store.errors("saving the quality state"), self.store.engine.begin() as conn:
            conn.execute(
                upsert(self.store.dialect, self.store.state),
                [{"model": self.model, "seen_until": started}],
            )


_NO_TIMES = np.array([], dtype="datetime64[us]")


def _stamp(value: datetime | None) -> str:
    return utc(value).isoformat() if value is not None else "-"


def _utc_array(values: Sequence[datetime]) -> np.ndarray:
    """Timestamps as naive UTC datetime64 (SQLite gives them without a zone)."""
    return np.array([utc(v).replace(tzinfo=None) for v in values], dtype="datetime64[us]")


def _windows(times: pd.Series) -> list[Window]:
    times = pd.to_datetime(times).dt.tz_localize("UTC")
    return [
        Window(kind, start) for kind in WINDOWS for start in sorted(set(window_start(kind, times)))
    ]


def _ranges(windows: Iterable[Window]) -> list[tuple[datetime, datetime]]:
    """The time covered by ``windows``, as few contiguous ranges as it takes."""
    spans = sorted((w.start, w.end) for w in windows)
    merged: list[list[pd.Timestamp]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s.to_pydatetime(), e.to_pydatetime()) for s, e in merged]


def _empty(config: QualityConfig) -> pd.DataFrame:
    columns = ["observed_at", "label"]
    if config.prediction is not None:
        columns.append("predicted")
    columns += [SCORE + c for c in config.scores]
    return pd.DataFrame({c: [] for c in columns})


def response_values(response: str, names: Sequence[str], row: int) -> dict[str, Any] | None:
    """The ``row``-th value of each of the outputs ``names`` of a logged V2 response;
    None when the response lacks one or is shorter."""
    try:
        outputs = {o["name"]: o for o in orjson.loads(response).get("outputs", [])}
    except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
        return None
    values = {}
    for name in names:
        output = outputs.get(name)
        if output is None:
            return None
        data = _flat(output.get("data"))
        shape = output.get("shape") or [len(data)]
        stride = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if row * stride >= len(data):
            return None
        value = data[row * stride]
        values[name] = np.nan if value is None else value
    return values


def _flat(data: Any) -> list[Any]:
    if isinstance(data, dict):  # {"root": [...]} from some serialisers
        data = data.get("root", [])
    if not isinstance(data, list):
        return [data]
    if data and isinstance(data[0], list):
        return [v for part in data for v in _flat(part)]
    return data
