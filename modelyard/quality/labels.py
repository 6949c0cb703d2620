"""Ground truth in: labels from a CSV or Parquet file, or from V2 requests to the
``<name>-feedback`` model, checked and stored the same way.

A label is keyed by an entity id (the model's ``features.key``, e.g. ``user_id``: it
judges that entity's batch predictions) or by ``request_id``, the ``id`` of an online
response (with ``row``, the row of a batched request, 0 by default). Labels are text
compared as text, with numbers and booleans written one way: ``1``, ``1.0`` and
``"1"`` are the same label, ``True`` and ``"true"`` too.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelyard.declarations.monitoring import REGRESSION, QualityConfig
from modelyard.errors import QualityError
from modelyard.quality.tables import ENTITY, REQUEST, LoadResult, QualityStore

REQUEST_ID, ROW, LABEL, OBSERVED_AT = "request_id", "row", "label", "observed_at"
FILE_SUFFIXES = (".csv", ".parquet", ".pq")
# Problems listed per kind of mistake before "and N more".
SHOWN = 3
_INTEGRAL = re.compile(r"-?\d+\.0*")


class LabelError(QualityError):
    """Labels that cannot be stored; the message names the rows and the fix."""


def label_text(value: Any) -> str:
    """A label or a predicted class as the text both are compared as."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = str(value).strip()
    if text.lower() in ("true", "false"):
        return text.lower()
    if _INTEGRAL.fullmatch(text):
        return text.split(".")[0]
    return text


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == ""


def _where(rows: Sequence[int], name: str) -> str:
    shown = ", ".join(str(r) for r in rows[:SHOWN])
    more = f" and {len(rows) - SHOWN:,} more" if len(rows) > SHOWN else ""
    return f"{name} {shown}{more}"


def label_frame(
    config: QualityConfig,
    kind: str,
    keys: Sequence[Any],
    labels: Sequence[Any],
    observed_at: Sequence[Any] | None,
    rows: Sequence[Any] | None = None,
    where: str = "row",
    first: int = 1,
) -> pd.DataFrame:
    """Checked labels as the store takes them (kind, key, row, label, observed_at).

    ``observed_at`` None means now; ``where``/``first`` say how problems name a row
    (``line`` from 2 for a CSV file, ``row`` from 1 otherwise).
    """
    n = len(keys)
    numbers = list(range(first, first + n))
    problems: list[str] = []
    key_name = REQUEST_ID if kind == REQUEST else (config.key or "key")
    blank = [numbers[i] for i, k in enumerate(keys) if _blank(k)]
    if blank:
        problems.append(f"{_where(blank, where)}: {key_name} is empty; give every label its id")
    texts = [label_text(v) if not _blank(v) else "" for v in labels]
    empty = [numbers[i] for i, t in enumerate(texts) if t == ""]
    if empty:
        problems.append(f"{_where(empty, where)}: label is empty; drop the row or fill it in")
    if config.task == REGRESSION:
        bad = [numbers[i] for i, t in enumerate(texts) if t and not _is_number(t)]
        if bad:
            example = texts[bad[0] - first]
            problems.append(
                f"{_where(bad, where)}: label {example!r} is not a number; model "
                f"'{config.model}' is a regression, so its labels are numbers"
            )
    if observed_at is None:
        observed = pd.Series([pd.Timestamp.now(tz="UTC")] * n)
    else:
        observed = _times(observed_at)
        unparsed = [numbers[i] for i, t in enumerate(observed) if pd.isna(t)]
        if unparsed:
            example = observed_at[unparsed[0] - first]
            problems.append(
                f"{_where(unparsed, where)}: observed_at {example!r} is not a time; write ISO "
                "8601, e.g. 2025-01-31T12:00:00Z (UTC when no zone is given)"
            )
    positions = [0] * n
    if rows is not None:
        parsed = pd.to_numeric(pd.Series(list(rows), dtype=object), errors="coerce")
        wrong = [numbers[i] for i, r in enumerate(parsed) if pd.isna(r) or r < 0 or r != int(r)]
        if wrong:
            problems.append(
                f"{_where(wrong, where)}: row is not a whole number >= 0 (the row of the "
                "request's batch, 0 for the first)"
            )
        else:
            positions = [int(r) for r in parsed]
    if problems:
        raise LabelError(f"model '{config.model}': " + "; ".join(problems))
    return pd.DataFrame(
        {
            "kind": kind,
            "key": [label_text(k) if not isinstance(k, str) else k for k in keys],
            "row": positions,
            "label": texts,
            "observed_at": observed.to_numpy(),
        }
    ).astype({"observed_at": "datetime64[us, UTC]"})


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _times(values: Sequence[Any]) -> pd.Series:
    """ISO 8601 texts (or datetimes) as UTC timestamps (a time without a zone is UTC);
    NaT where one does not parse. One value at a time: pandas parsing a column that
    mixes offsets gives a time without one the offset of the row before."""

    def parse(value: Any) -> datetime | None:
        if isinstance(value, pd.Timestamp):
            value = value.to_pydatetime()
        if not isinstance(value, datetime):
            try:
                value = datetime.fromisoformat(str(value).strip())
            except ValueError:
                return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    return pd.Series(pd.to_datetime([parse(v) for v in values], utc=True))


def read_file(config: QualityConfig, path: Path) -> pd.DataFrame:
    """The labels of a CSV or Parquet file, checked (see ``label_frame``)."""
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise LabelError(
            f"{path}: labels are read from {', '.join(FILE_SUFFIXES)} files; convert it, "
            "or rename it if it is one"
        )
    try:
        if suffix == ".csv":
            # Everything as text: the labels stay as written ("01" is not 1).
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            frame = pd.read_parquet(path)
    except FileNotFoundError:
        raise LabelError(f"{path}: no such file") from None
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise LabelError(f"{path}: cannot read it as {suffix[1:]}: {e}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    kind, key = _key_column(config, path, list(frame.columns))
    where, first = ("line", 2) if suffix == ".csv" else ("row", 1)
    try:
        return label_frame(
            config,
            kind,
            frame[key].tolist(),
            frame[LABEL].tolist(),
            frame[OBSERVED_AT].tolist(),
            frame[ROW].tolist() if ROW in frame else None,
            where=where,
            first=first,
        )
    except LabelError as e:
        raise LabelError(f"{path}: {e}") from None


def _key_column(config: QualityConfig, path: Path, columns: list[str]) -> tuple[str, str]:
    keys = [k for k in (config.key, REQUEST_ID) if k]
    expected = [*keys, LABEL, OBSERVED_AT, ROW]
    problems = []
    for name in columns:
        if name not in expected:
            close = difflib.get_close_matches(name, expected, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "remove it"
            problems.append(f"unknown column {name!r}; {hint}")
    present = [k for k in keys if k in columns]
    if not present:
        which = " or ".join(repr(k) for k in keys)
        what = (
            f"the entity id of batch predictions ({config.key!r})"
            if config.key
            else "the id of the online request"
        )
        problems.append(f"no id column: add {which}, {what}")
    elif len(present) > 1:
        problems.append(
            f"both {config.key!r} and {REQUEST_ID!r}: a file holds labels of entities or of "
            "online requests; split it in two"
        )
    problems += [f"no {c!r} column" for c in (LABEL, OBSERVED_AT) if c not in columns]
    if ROW in columns and present == [config.key]:
        problems.append(f"{ROW!r} is for request_id labels; remove it")
    if problems:
        raise LabelError(
            f"{path}: " + "; ".join(problems) + f" (columns: {', '.join(map(repr, columns))}; "
            f"expected {' or '.join(map(repr, keys))}, {LABEL!r}, {OBSERVED_AT!r}"
            + (f", optionally {ROW!r}" if REQUEST_ID in keys else "")
            + ")"
        )
    key = present[0]
    return (REQUEST if key == REQUEST_ID else ENTITY), key


def load_file(config: QualityConfig, path: Path, store: QualityStore) -> LoadResult:
    """Check the whole file, then store it in one transaction."""
    return store.write_labels(config.model, read_file(config, path))
