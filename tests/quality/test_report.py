"""The report of stored metrics: a PNG that is a real image of a sensible size, and an
HTML page that needs nothing but itself."""

from __future__ import annotations

import io
import re
import struct
from datetime import UTC, datetime, timedelta

import matplotlib.image
import numpy as np
import pandas as pd
from rich.console import Console

from modelyard.quality import report
from modelyard.quality.evaluate import Evaluator
from tests.quality.conftest import Stores, classifier, scores_frame

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


def stored_metrics(stores: Stores) -> pd.DataFrame:
    """Two versions scored over three weeks of labels."""
    rng = np.random.default_rng(2)
    ids = [f"u{i}" for i in range(200)]
    p_yes = rng.random(200)
    truth = np.where(rng.random(200) < p_yes, "yes", "no")
    stores.run("r1", scores_frame(ids, p_yes), version="1.0")
    stores.run(
        "r1", scores_frame(ids, np.clip(p_yes + rng.normal(0, 0.3, 200), 0, 1)), version="2.0"
    )
    config = classifier(stores.folder, stores.url)
    start = datetime(2025, 1, 6, tzinfo=UTC)
    stores.labels(config, ids, list(truth), [start + timedelta(hours=2.5 * i) for i in range(200)])
    evaluator = Evaluator(config, stores.quality)
    evaluator.refresh()
    return evaluator.stored(kind="week")


def test_png_html_and_table(sqlite_stores: Stores) -> None:
    frame = stored_metrics(sqlite_stores)
    png = report.plot(frame, "classification", "week", "churn")
    width, height = png_size(png)
    assert 800 <= width <= 2400 and 400 <= height <= 2000, (width, height)
    image = matplotlib.image.imread(io.BytesIO(png), format="png")  # decodes: a valid image
    assert image.shape[:2] == (height, width)
    assert image.std() > 0.05  # lines and text, not a blank canvas

    html = report.html_report(frame, "classification", "week", "churn", "sqlite:///p.db")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    embedded = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert embedded is not None
    # Self-contained: no link, script, stylesheet or image fetched from anywhere.
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "<script" not in html and "@import" not in html
    for text in ("accuracy", "precision (macro)", "recall (macro)", "ROC AUC (macro)",
                 "Per class", "week of 2025-01-06"):  # fmt: skip
        assert text in html, text

    console = Console(width=80, record=True)
    console.print(report.rich_table(frame, "classification", "week", "churn"))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    rows = [line for line in text.splitlines() if re.match(r"\s*[12]\.0\s+2025-", line)]
    assert len(rows) == frame.groupby(["version", "start"]).ngroups == 6  # 2 versions, 3 weeks
