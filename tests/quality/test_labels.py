"""Labels from CSV and Parquet files through `modelyard feedback load`: checked, stored
once however often they are loaded, and refused with the rows and the fix."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from modelyard.quality.labels import LabelError, label_text, read_file
from tests.quality.conftest import classifier
from tests.support.declarations import run_cli

DECLARATION = """\
name: churn
version: "1.0"
runtime: sklearn
model: {uri: model.joblib}
monitoring: {task: classification, prediction: predict}
"""


def feedback(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("feedback", "load", *args)


def labels_in(folder: Path) -> pd.DataFrame:
    engine = sa.create_engine(f"sqlite:///{folder}/predictions.db")
    try:
        return pd.read_sql("SELECT * FROM modelyard_labels ORDER BY key, row", engine)
    finally:
        engine.dispose()


def churn_folder(tmp_path: Path) -> Path:
    """The declaration's model folder; the labels commands never load the model."""
    folder = tmp_path / "churn"
    folder.mkdir()
    (folder / "model.yaml").write_text(DECLARATION)
    (folder / "model.joblib").write_bytes(b"never loaded")
    return folder


def test_a_file_loaded_twice_is_stored_once(tmp_path: Path) -> None:
    folder = churn_folder(tmp_path)
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "request_id,row,label,observed_at\n"
        "r1,0,1,2025-01-06T10:00:00Z\n"
        "r1,1,0,2025-01-06T10:00:00+01:00\n"
        "r2,0,1.0,2025-01-07 08:00:00\n"
    )
    first = feedback(str(folder), str(csv))
    assert first.returncode == 0, first.stderr
    assert "3 labels: 3 new or changed" in first.stdout
    again = feedback("churn", str(csv), "--dir", str(tmp_path))  # by name, in --dir
    assert again.returncode == 0, again.stderr
    assert "0 new or changed, 3 already stored" in again.stdout
    stored = labels_in(folder)
    assert stored[["kind", "key", "row", "label"]].values.tolist() == [
        ["request", "r1", 0, "1"],
        ["request", "r1", 1, "0"],
        ["request", "r2", 0, "1"],  # 1.0 and 1 are the same label
    ]
    # +01:00 is stored in UTC; no zone means UTC.
    observed = pd.to_datetime(stored["observed_at"]).dt.strftime("%H:%M").tolist()
    assert observed == ["10:00", "09:00", "08:00"]


def test_parquet_with_entity_ids(tmp_path: Path) -> None:
    config = classifier(tmp_path, f"sqlite:///{tmp_path}/p.db")
    path = tmp_path / "labels.parquet"
    pd.DataFrame(
        {
            "user_id": ["a", "b"],
            "label": ["yes", "no"],
            "observed_at": pd.to_datetime(["2025-01-06T10:00:00Z", "2025-01-07T10:00:00Z"]),
        }
    ).to_parquet(path)
    frame = read_file(config, path)
    assert frame["kind"].tolist() == ["entity", "entity"]
    assert frame["key"].tolist() == ["a", "b"]
    assert str(frame["observed_at"].dtype) == "datetime64[us, UTC]"


BAD_FILES = {
    "no-time": ("user_id,label\na,yes\n", ["no 'observed_at' column"]),
    "typo": (
        "user_id,labl,observed_at\na,yes,2025-01-01\n",
        ["unknown column 'labl'; did you mean 'label'?", "no 'label' column"],
    ),
    "no-id": (
        "label,observed_at\nyes,2025-01-01\n",
        ["no id column: add 'user_id' or 'request_id'"],
    ),
    "both-ids": ("user_id,request_id,label,observed_at\na,r,yes,2025-01-01\n", ["split it in two"]),
    "bad-time": (
        "user_id,label,observed_at\na,yes,yesterday\nb,no,2025-01-01\n",
        ["line 2: observed_at 'yesterday' is not a time", "ISO 8601"],
    ),
    "empty": (
        "user_id,label,observed_at\na,,2025-01-01\n,no,2025-01-01\n",
        ["line 2: label is empty", "line 3: user_id is empty"],
    ),
    "bad-row": (
        "request_id,row,label,observed_at\nr,-1,yes,2025-01-01\n",
        ["line 2: row is not a whole number >= 0"],
    ),
}


@pytest.mark.parametrize(("text", "fragments"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_bad_files_are_refused_with_the_rows_and_the_fix(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    config = classifier(tmp_path, f"sqlite:///{tmp_path}/p.db")
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(LabelError) as info:
        read_file(config, path)
    message = str(info.value)
    assert message.startswith(str(path))
    for fragment in fragments:
        assert fragment in message, message


def test_a_regression_takes_numbers_only(tmp_path: Path) -> None:
    config = classifier(
        tmp_path, f"sqlite:///{tmp_path}/p.db", task="regression", prediction="v", scores={}
    )
    path = tmp_path / "labels.csv"
    path.write_text("user_id,label,observed_at\na,3.5,2025-01-01\nb,tall,2025-01-01\n")
    with pytest.raises(LabelError, match="line 3: label 'tall' is not a number"):
        read_file(config, path)


def test_the_command_names_the_problem_and_stores_nothing(tmp_path: Path) -> None:
    folder = churn_folder(tmp_path)
    csv = tmp_path / "labels.csv"
    csv.write_text("request_id,label,observed_at\nr1,1,2025-01-01\nr2,1,soon\n")
    result = feedback(str(folder), str(csv))
    assert result.returncode == 1
    assert "line 3: observed_at 'soon' is not a time" in result.stderr
    assert not (folder / "predictions.db").exists()
    missing = feedback("nope", str(csv), "--dir", str(tmp_path))
    assert missing.returncode == 1 and "no model 'nope'" in missing.stderr


def test_labels_are_compared_as_text_written_one_way() -> None:
    assert [label_text(v) for v in (1, 1.0, "1", "1.00", b"1", True, "TRUE", 2.5, " a ")] == [
        "1", "1", "1", "1", "1", "true", "true", "2.5", "a",
    ]  # fmt: skip
