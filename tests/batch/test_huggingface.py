"""Batch scoring a no-code Hugging Face model: the sentiment example (a tiny local
text-classification model) declared with features and predictions, scored from SQLite
by its own runtime, each stored answer the pipeline's own on the same text."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import transformers
import yaml

from modelyard.batch.run import BatchJob, RunOptions
from modelyard.store.tables import table_name

REPO = Path(__file__).resolve().parents[2]
SENTIMENT = REPO / "model-settings" / "sentiment"
TEXTS = [
    "i love this great movie",
    "what a terrible day",
    "the food was wonderful and the staff kind",
    "this is the worst service i have ever had",
    "an ordinary afternoon",
    "absolutely fantastic, would go again",
    "boring and far too long",
]


def test_huggingface_batch_stores_the_pipelines_own_labels(tmp_path: Path) -> None:
    folder = tmp_path / "sentiment"
    shutil.copytree(SENTIMENT, folder, ignore=shutil.ignore_patterns("model-settings.json"))
    with sqlite3.connect(tmp_path / "reviews.db") as conn:
        conn.execute("CREATE TABLE reviews (review_id TEXT, body TEXT, stars INTEGER)")
        conn.executemany(
            "INSERT INTO reviews VALUES (?, ?, ?)",
            [(f"r{i:02d}", t, i % 5) for i, t in enumerate(TEXTS)],
        )
    (folder / "features.sql").write_text("SELECT review_id, body, stars FROM reviews\n")
    declaration = {
        "name": "sentiment", "version": "1", "runtime": "huggingface",
        "model": {"uri": "./", "parameters": {"task": "text-classification", "framework": "pt"}},
        "features": {"sql": "features.sql", "source": f"sqlite:///{tmp_path / 'reviews.db'}",
                     "key": "review_id", "columns": ["body"]},
        "predictions": {"columns": {"review_id": "BYTES", "answer": "BYTES"},
                        "outputs": {"output": "answer"},
                        "store": f"sqlite:///{tmp_path / 'predictions.db'}"},
    }  # fmt: skip
    (folder / "model.yaml").write_text(yaml.safe_dump(declaration, sort_keys=False))

    # Chunks of 3 rows: several requests, the last one short.
    result = BatchJob(folder).run(RunOptions(run_id="night", chunk_rows=3, bar=False))
    assert result.error is None, result.error
    assert (result.rows, result.bad_rows) == (len(TEXTS), 0)

    with sqlite3.connect(tmp_path / "predictions.db") as conn:
        query = f'SELECT review_id, answer FROM "{table_name("sentiment", "1")}"'
        stored = dict(conn.execute(query).fetchall())
    pipeline = transformers.pipeline("text-classification", model=str(SENTIMENT), framework="pt")
    own = pipeline(TEXTS)
    assert sorted(stored) == [f"r{i:02d}" for i in range(len(TEXTS))]
    for i, expected in enumerate(own):
        answer = json.loads(stored[f"r{i:02d}"])
        assert answer["label"] == expected["label"], (TEXTS[i], answer, expected)
        assert answer["score"] == pytest.approx(expected["score"], rel=1e-5)
    # Not one label for everything: the texts were told apart.
    assert {a["label"] for a in own} == {"POSITIVE", "NEGATIVE"}
