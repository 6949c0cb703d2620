"""Drift for people: a table ranked by drift for the terminal, a picture of the
reference against the current distribution of the most drifted features (PNG), and a
self-contained HTML report (the picture inline)."""

from __future__ import annotations

import base64
import html
import io
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from rich import box
from rich.table import Table

from modelyard.quality.drift import NUMERIC, Currents, Feature
from modelyard.quality.report import write

# The features pictured (the most drifted first), and the PSI the table marks.
TOP = 4
HISTOGRAM_BINS = 30
PSI_ALERT = 0.2
HEADERS = {
    "source": "source", "window": "window", "version": "version", "feature": "feature",
    "kind": "kind", "psi": "PSI", "ks": "KS", "ks_pvalue": "KS p", "chi2": "chi²",
    "chi2_pvalue": "chi² p", "missing": "missing", "samples": "rows",
}  # fmt: skip

__all__ = ["html_report", "picture", "rich_table", "write"]


def _text(column: str, value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if column == "samples":
        return f"{int(value):,}"  # type: ignore[call-overload]
    if column == "missing":
        return f"{float(value):.1%}"  # type: ignore[arg-type]
    if isinstance(value, float):
        return f"{value:.3g}" if "pvalue" in column else f"{value:.4f}"
    return str(value)


def rich_table(frame: pd.DataFrame, title: str) -> Table:
    table = Table(
        title=title, caption=f"ranked by PSI; * PSI over {PSI_ALERT}", box=box.SIMPLE_HEAD,
        pad_edge=False, collapse_padding=True,
    )  # fmt: skip
    for column, header in HEADERS.items():
        left = column in ("source", "window", "version", "feature", "kind")
        table.add_column(header, justify="left" if left else "right", no_wrap=True)
    for row in frame.to_dict("records"):
        cells = [_text(c, row[c]) for c in HEADERS]
        if not pd.isna(row["psi"]) and row["psi"] > PSI_ALERT:
            cells[list(HEADERS).index("psi")] += "*"
        table.add_row(*cells)
    return table


def picture(
    frame: pd.DataFrame, reference: dict[str, Feature], currents: Currents, model: str
) -> bytes:
    """A PNG: for the TOP most drifted features of the first window of ``frame``, the
    reference's distribution against the current one (histograms of shares over bins of
    one width for numeric features, bars for categories)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    first = frame.iloc[0]
    where = (first["source"], first["window"])
    rows = frame[(frame["source"] == where[0]) & (frame["window"] == where[1])].head(TOP)
    current = currents[where]
    columns = min(len(rows), 2)
    lines = -(-len(rows) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(6 * columns, 3.4 * lines), squeeze=False)
    for ax, row in zip(axes.flat, rows.to_dict("records"), strict=False):
        feature = reference[row["feature"]]
        values = Feature.of(feature.name, current[feature.name], feature.kind).values
        if feature.kind == NUMERIC:
            both = np.concatenate([feature.values, values])
            # Bins of one width over both: the bar heights compare as shares.
            edges = np.linspace(both.min(), both.max(), HISTOGRAM_BINS + 1)
            for data, label, color in ((feature.values, "reference", "#888"),
                                       (values, where[1], "#d62728")):  # fmt: skip
                weights = np.full(len(data), 1 / len(data)) if len(data) else None
                ax.hist(data, bins=edges, weights=weights, histtype="stepfilled", alpha=0.45,
                        label=label, color=color)  # fmt: skip
        else:
            categories = sorted(set(feature.values) | set(values))
            x = np.arange(len(categories))
            for offset, data, label, color in ((-0.2, feature.values, "reference", "#888"),
                                               (0.2, values, where[1], "#d62728")):  # fmt: skip
                counts = pd.Series(list(data)).value_counts()
                shares = [counts.get(c, 0) / max(len(data), 1) for c in categories]
                ax.bar(x + offset, shares, width=0.4, label=label, color=color, alpha=0.7)
            ax.set_xticks(x, categories, rotation=30)
        ax.set_title(f"{feature.name}: PSI {row['psi']:.3f}")
        ax.set_ylabel("share of rows")
        ax.grid(True, alpha=0.3)
        ax.legend(frameon=False)
    for ax in list(axes.flat)[len(rows) :]:
        ax.set_visible(False)
    figure.suptitle(
        f"model '{model}' version {first['version']}: {where[0]} {where[1]} against the reference"
    )
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100)
    plt.close(figure)
    return out.getvalue()


def html_report(
    frame: pd.DataFrame, reference: dict[str, Feature], currents: Currents, model: str,
    store: str,
) -> str:  # fmt: skip
    png = base64.b64encode(picture(frame, reference, currents, model)).decode("ascii")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS.values())
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_text(c, row[c]))}</td>" for c in HEADERS) + "</tr>"
        for row in frame.to_dict("records")
    )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Drift: {html.escape(model)}</title><style>{style}</style></head><body>"
        f"<h1>Drift: {html.escape(model)}</h1>"
        f"<p>Against the reference sample; from {html.escape(store)}, generated "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Ranked by PSI (over {PSI_ALERT}: drifted).</p>"
        f'<img alt="reference and current distributions" src="data:image/png;base64,{png}">'
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>\n"
    )
