"""The customer-profile example end to end, as its README tells it: a batch run, a labels
file, `modelyard metrics` (table, plot, report), and the same numbers on the
Prometheus endpoint of the server that serves the model."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import matplotlib.image
import pytest

from modelyard.quality.config import config_for
from modelyard.quality.evaluate import Evaluator
from modelyard.quality.tables import QualityStore
from tests.batch.conftest import EXAMPLE, FILES, batch, ok
from tests.quality.served import poll, sample
from tests.support.server import MODELYARD

ROW = re.compile(
    r"^\s*0\.1\.0\s+(\d{4}-\d\d-\d\d)\s+([\d,]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", re.M
)


def cli(*args: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [MODELYARD, *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **env, "COLUMNS": "100"},
    )  # fmt: skip
    assert result.returncode == 0, f"modelyard {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.mark.timeout(240)
def test_batch_run_labels_metrics_and_prometheus(tmp_path: Path, serve_dir) -> None:  # type: ignore[no-untyped-def]
    folder = tmp_path / "customer-profile"
    folder.mkdir()
    for name in FILES:
        shutil.copy2(EXAMPLE / name, folder / name)
    store = f"sqlite:///{tmp_path}/predictions.db"
    env = {"PREDICTIONS_DB_URL": store}

    ok(batch(folder, store, "--run-id", "nightly", "--no-progress"))
    labels = tmp_path / "labels.csv"
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    made = subprocess.run(
        [sys.executable, str(EXAMPLE / "make_labels.py"), "--database", str(folder / "features.db"),
         "--end", today, "--out", str(labels)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    count = int(re.search(r"wrote ([\d,]+) labels", made.stdout)[1].replace(",", ""))  # type: ignore[index]
    assert 1500 < count < 2500  # 40% of 5,000 users
    loaded = cli("feedback", "load", str(folder), str(labels), env=env)
    assert f"{count:,} labels: {count:,} new or changed" in loaded
    again = cli("feedback", "load", str(folder), str(labels), env=env)
    assert "0 new or changed" in again

    png, html = tmp_path / "quality.png", tmp_path / "quality.html"
    out = cli("metrics", str(folder), "--plot", str(png), "--html", str(html), env=env)
    for header in ("accuracy", "precision", "recall", "F1", "ROC AUC", "labelled"):
        assert header in out, out
    rows = ROW.findall(out)
    assert len(rows) >= 4, out  # four weeks of labels (five when they straddle one more)
    assert sum(int(r[1].replace(",", "")) for r in rows) == count
    for _, _, accuracy, precision, recall in rows:
        # The example's classifier is about 82% accurate on held-out users.
        assert 0.7 < float(accuracy) < 0.95
        assert min(float(precision), float(recall)) > 0.7
    # Days, from the last week on, of one version.
    days = cli("metrics", str(folder), "--window", "day", "--since", rows[-1][0],
               "--version", "0.1.0", env=env)  # fmt: skip
    dates = [r[0] for r in ROW.findall(days)]
    assert 1 <= len(dates) <= 7 and min(dates) >= rows[-1][0], days
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 400 and image.shape[1] > 800
    assert (
        html.read_text().startswith("<!DOCTYPE html>")
        and "data:image/png;base64," in html.read_text()
    )

    # The server exports the latest week's numbers, the same as the table's last row.
    server = serve_dir(folder, MODELYARD_QUALITY_REFRESH_S="0.5", **env)
    week, labelled, accuracy, precision, recall = rows[-1]
    gauges = {"accuracy": accuracy, "precision_macro": precision, "recall_macro": recall}

    def exported(samples: dict) -> bool:
        return sample(samples, "modelyard_model_metric_samples", model="gender", window="week") > 0

    samples = poll(server, exported)
    common = {"model": "gender", "version": "0.1.0", "window": "week", "class": ""}
    for metric, shown in gauges.items():
        got = sample(samples, "modelyard_model_metric", metric=metric, **common)
        assert f"{got:.4f}" == shown, (metric, got, shown)
    assert sample(samples, "modelyard_model_metric_samples", model="gender", window="week") == int(
        labelled.replace(",", "")
    )
    start = sample(samples, "modelyard_model_metric_window_start_timestamp_seconds",
                   model="gender", window="week")  # fmt: skip
    assert datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d") == week
    # Exactly the stored values, not just their rounding.
    config = config_for(str(folder), folder, store)
    quality = QualityStore.open(config)
    try:
        stored = Evaluator(config, quality).stored(kind="week")
    finally:
        quality.close()
    latest = stored[(stored["start"] == stored["start"].max()) & (stored["class"] == "")]
    for metric in gauges:
        value = latest[latest["metric"] == metric]["value"].iloc[0]
        assert sample(samples, "modelyard_model_metric", metric=metric, **common) == value
    # And the batch run, from the store's runs table.
    assert sample(samples, "modelyard_batch_last_run_rows", model="gender") == 5000
    assert sample(samples, "modelyard_batch_runs", model="gender", status="complete") == 1
    assert sample(samples, "modelyard_batch_last_run_failed", model="gender") == 0
    assert sample(samples, "modelyard_batch_last_due_timestamp_seconds", model="gender") > 0
