"""Stored metrics for people: a table for the terminal, a plot of each metric over time
per version (PNG), and a self-contained HTML report (the plot inline, no external
assets: it can be mailed or attached to a ticket as one file)."""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from rich import box
from rich.table import Table

from modelyard.declarations.monitoring import CLASSIFICATION
from modelyard.quality.scoring import OVERALL

# The headline metrics of each task, in the order they are shown.
HEADLINE = {
    CLASSIFICATION: ["accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc_macro"],
    "regression": ["mae", "rmse"],
}
PER_CLASS = ["precision", "recall", "f1", "roc_auc"]
# Plots: a tick on every window up to this many; y axes of 0-1 metrics at least this tall.
MAX_TICKS = 16
MIN_SPAN = 0.2
TITLES = {
    "accuracy": "accuracy",
    "precision_macro": "precision (macro)",
    "recall_macro": "recall (macro)",
    "f1_macro": "F1 (macro)",
    "roc_auc_macro": "ROC AUC (macro)",
    "mae": "MAE",
    "rmse": "RMSE",
}


def wide(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per (version, window start): samples and the headline metrics."""
    overall = frame[frame["class"] == OVERALL]
    table = overall.pivot_table(
        index=["version", "start"], columns="metric", values="value", aggfunc="first", dropna=False
    )
    samples = overall.groupby(["version", "start"])["window_samples"].first()
    table.insert(0, "samples", samples)
    present = [m for m in HEADLINE[task] if m in table.columns]
    return table[["samples", *present]].reset_index()


def per_class(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (version, window start, class): support and the per-class metrics."""
    classes = frame[(frame["class"] != OVERALL) & frame["metric"].isin(PER_CLASS)]
    table = classes.pivot_table(
        index=["version", "start", "class"], columns="metric", values="value",
        aggfunc="first", dropna=False,
    )  # fmt: skip
    support = classes.groupby(["version", "start", "class"])["samples"].first()
    table.insert(0, "support", support)
    present = [m for m in PER_CLASS if m in table.columns]
    return table[["support", *present]].reset_index()


def _label(start: pd.Timestamp, kind: str) -> str:
    return start.strftime("%Y-%m-%d") if kind == "day" else f"week of {start:%Y-%m-%d}"


def _number(value: float | None) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.4f}"


def _short(metric: str) -> str:
    """A metric's column header on a terminal (macro averages say so in the caption)."""
    return TITLES[metric].removesuffix(" (macro)")


def rich_table(frame: pd.DataFrame, task: str, kind: str, title: str) -> Table:
    rows = wide(frame, task)
    metrics = [c for c in rows.columns if c not in ("version", "start", "samples")]
    caption = (
        "precision, recall, F1, ROC AUC: macro averages over the classes"
        if task == CLASSIFICATION
        else None
    )
    table = Table(
        title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )
    for name in ["version", kind, "labelled", *[_short(m) for m in metrics]]:
        table.add_column(
            name, justify="left" if name in ("version", kind) else "right", no_wrap=True
        )
    for row in rows.to_dict("records"):
        table.add_row(
            row["version"], f"{row['start']:%Y-%m-%d}", f"{int(row['samples']):,}",
            *[_number(row[m]) for m in metrics],
        )  # fmt: skip
    return table


def rich_class_table(frame: pd.DataFrame, kind: str, title: str) -> Table:
    rows = per_class(frame)
    metrics = [c for c in rows.columns if c in PER_CLASS]
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    left = ("version", kind, "class")
    for name in [*left, "support", *[_short(f"{m}_macro") for m in metrics]]:
        table.add_column(name, justify="left" if name in left else "right", no_wrap=True)
    for row in rows.to_dict("records"):
        table.add_row(
            row["version"], f"{row['start']:%Y-%m-%d}", row["class"],
            f"{int(row['support']):,}", *[_number(row[m]) for m in metrics],
        )  # fmt: skip
    return table


def plot(frame: pd.DataFrame, task: str, kind: str, model: str) -> bytes:
    """A PNG: one panel per headline metric and one of the labelled counts, a line per
    version over the windows."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    rows = wide(frame, task)
    metrics = [c for c in rows.columns if c not in ("version", "start", "samples")]
    panels = [*metrics, "samples"]
    columns = 2 if len(panels) > 3 else len(panels)
    lines = -(-len(panels) // columns)
    figure, axes = plt.subplots(
        lines, columns, figsize=(6 * columns, 3.2 * lines), squeeze=False, sharex=True
    )
    starts = sorted(rows["start"].unique())
    for ax, metric in zip(axes.flat, panels, strict=False):
        for version, part in rows.groupby("version", sort=True):
            ax.plot(part["start"], part[metric], marker="o", markersize=4, label=f"v{version}")
        ax.set_title("labelled predictions" if metric == "samples" else TITLES[metric])
        if metric == "samples":
            ax.set_ylim(0, max(float(rows["samples"].max()) * 1.15, 1.0))
        elif metric in HEADLINE[CLASSIFICATION]:
            ax.set_ylim(*_unit_range(rows[metric]))
        ax.grid(True, alpha=0.3)
        if len(starts) <= MAX_TICKS:  # a tick on every window
            ax.set_xticks(starts)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%b %d"))
        ax.tick_params(axis="x", labelrotation=30)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    # One legend for all panels, above them, where it covers no line.
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.suptitle(f"model '{model}': quality per {kind} (UTC), by version", y=0.99)
    figure.legend(
        handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.96),
        ncol=min(len(labels), 8), frameon=False,
    )  # fmt: skip
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100)
    plt.close(figure)
    return out.getvalue()


def _unit_range(values: pd.Series) -> tuple[float, float]:
    """Y limits for a metric between 0 and 1: around the values, at least MIN_SPAN
    tall, so that a drop of a few points shows without noise looking like one."""
    values = values.dropna()
    if values.empty:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    middle, span = (low + high) / 2, max(high - low, MIN_SPAN) * 1.2
    low, high = middle - span / 2, middle + span / 2
    if low < 0:
        low, high = 0.0, min(1.0, high - low)
    if high > 1:
        low, high = max(0.0, low - (high - 1)), 1.0
    return low, high


def _html_table(rows: pd.DataFrame, kind: str, headers: dict[str, str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers.values())
    body = []
    for row in rows.to_dict("records"):
        cells = []
        for column in headers:
            value = row[column]
            if column == "start":
                text = _label(value, kind)
            elif column in ("samples", "support"):
                text = f"{int(value):,}"
            elif column in ("version", "class"):
                text = str(value)
            else:
                text = _number(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def html_report(frame: pd.DataFrame, task: str, kind: str, model: str, store: str) -> str:
    png = base64.b64encode(plot(frame, task, kind, model)).decode("ascii")
    rows = wide(frame, task)
    headline = {"version": "version", "start": kind, "samples": "labelled"}
    headline.update({m: TITLES[m] for m in rows.columns if m in TITLES})
    sections = [
        f"<h1>Model quality: {html.escape(model)}</h1>",
        f"<p>Per {kind} (UTC) of when the labels were observed, by model version; "
        f"from {html.escape(store)}, generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>",
        f'<img alt="metrics over time" src="data:image/png;base64,{png}">',
        "<h2>Metrics</h2>",
        _html_table(rows, kind, headline),
    ]
    if task == CLASSIFICATION:
        classes = per_class(frame)
        headers = {"version": "version", "start": kind, "class": "class", "support": "support"}
        headers.update({m: m.replace("_", " ") for m in PER_CLASS if m in classes.columns})
        sections += ["<h2>Per class</h2>", _html_table(classes, kind, headers)]
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}"
        "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Model quality: {html.escape(model)}</title><style>{style}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )


def write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
