"""Small, deterministic predictor model folders for the runtime tests.

Each folder holds a `model-settings.json` written as the declaration generator
writes it for `runtime: predictor`, a `predictor.py`, and what it needs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import sqlalchemy as sa
from sklearn.preprocessing import StandardScaler

IMPLEMENTATION = "modelyard_runtimes.predictor.PredictorRuntime"

DOUBLER = """
class Doubler:
    def __init__(self, factor=2):
        self.factor = factor

    def predict(self, instances):
        return instances * self.factor
"""

# preprocess -> predict -> postprocess, with a file of its own read at load.
WORDS = """
from pathlib import Path

import numpy as np


class WordLengths:
    def load(self, artifacts_dir):
        self.threshold = int((Path(artifacts_dir) / "threshold.txt").read_text())

    def preprocess(self, inputs):
        return [text.strip() for text in inputs]

    def predict(self, instances):
        return np.array([len(text) for text in instances])

    def postprocess(self, lengths):
        return {
            "length": lengths,
            "size": ["long" if n > self.threshold else "short" for n in lengths],
        }
"""

# A multi-input model: the runtime hands it a DataFrame.
TABLE = """
class Total:
    def predict(self, frame):
        return frame["price"] * frame["quantity"]
"""

FAULTY = """
import numpy as np

from modelyard_runtimes.errors import BadRequest


class Faulty:
    def preprocess(self, inputs):
        if "bad" in inputs:
            raise BadRequest("'bad' is not a word this model knows; send another word")
        return inputs

    def predict(self, instances):
        if "crash" in instances:
            return 1 / 0
        if "typo" in instances:
            raise ValueError("could not convert string to float: 'typo'")
        return np.array([len(word) for word in instances])
"""

# Features in, a score out: score = sum of the standardised features.
SCORER = """
import numpy as np


class SumScorer:
    def predict(self, instances):
        return np.asarray(instances).sum(axis=1)

    def postprocess(self, total):
        return {"score": total, "band": np.where(total > 0, "high", "low")}
"""

# What the features tests ask for, and what they look for afterwards.
PROFILES = pd.DataFrame(
    {
        "user_id": [f"u{i:02d}" for i in range(40)],
        "age": [20 + i for i in range(40)],
        "spend": [round(10.0 * i + 0.5, 2) for i in range(40)],
    }
)
FEATURES_SQL = "-- one row per user\nSELECT user_id, age, spend FROM profiles;\n"
PREDICTIONS = {"user_id": "BYTES", "score": "FP64", "band": "BYTES"}
HOSTILE_IDS = ["1; DROP TABLE profiles", "u01' OR '1'='1", "u01'); DELETE FROM profiles; --"]


def write_settings(
    folder: Path,
    name: str,
    extra: dict[str, Any],
    inputs: list[dict] | None = None,
    outputs: list[dict] | None = None,
    uri: str = "./",
    implementation: str = IMPLEMENTATION,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "name": name,
        "implementation": implementation,
        "parameters": {"uri": uri, "version": "1", "extra": extra},
    }
    if inputs is not None:
        settings["inputs"] = inputs
    if outputs is not None:
        settings["outputs"] = outputs
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))
    return folder


def predictor_folder(folder: Path, name: str, source: str, cls: str, **settings: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "predictor.py").write_text(source)
    extra = {"predictor": f"predictor.py:{cls}", **settings.pop("extra", {})}
    return write_settings(folder, name, extra, **settings)


def doubler(folder: Path, name: str = "doubler", **settings: Any) -> Path:
    return predictor_folder(folder, name, DOUBLER, "Doubler", **settings)


def words(folder: Path, name: str = "words", **settings: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "threshold.txt").write_text("5\n")
    return predictor_folder(
        folder, name, WORDS, "WordLengths",
        outputs=[
            {"name": "length", "datatype": "INT32", "shape": [-1, 1]},
            {"name": "size", "datatype": "BYTES", "shape": [-1, 1]},
        ],
        **settings,
    )  # fmt: skip


def table(folder: Path, name: str = "table") -> Path:
    return predictor_folder(folder, name, TABLE, "Total")


def faulty(folder: Path, name: str = "faulty") -> Path:
    return predictor_folder(folder, name, FAULTY, "Faulty")


def fill_profiles(url: str | sa.URL) -> None:
    """The `profiles` table of the features tests, in any SQLAlchemy database."""
    url = sa.make_url(url)
    if url.get_backend_name() in ("sqlite", "duckdb") and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS profiles"))
            conn.execute(
                sa.text(
                    "CREATE TABLE profiles "
                    "(user_id VARCHAR PRIMARY KEY, age INTEGER NOT NULL, spend DOUBLE PRECISION)"
                )
            )
            conn.execute(
                sa.text("INSERT INTO profiles VALUES (:user_id, :age, :spend)"),
                PROFILES.to_dict("records"),
            )
    finally:
        engine.dispose()


def profile_count(url: str) -> int:
    # DuckDB lets a process open a file read-only or read-write, not both at once.
    read_only = {"read_only": True} if url.startswith("duckdb") else {}
    engine = sa.create_engine(url, connect_args=read_only)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT COUNT(*) FROM profiles")).scalar_one()
    finally:
        engine.dispose()


def scorer(folder: Path, source: str, name: str = "scorer", **extra: Any) -> Path:
    """A features model over `profiles`; `source` may be relative (SQLite, DuckDB)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "features.sql").write_text(FEATURES_SQL)
    joblib.dump(StandardScaler().fit(PROFILES[["age", "spend"]]), folder / "scaler.pkl")
    return predictor_folder(
        folder, name, SCORER, "SumScorer",
        inputs=[{"name": "user_id", "datatype": "BYTES", "shape": [-1]}],
        extra={
            "features": {
                "sql": "features.sql", "source": source, "key": "user_id",
                "preprocess": "scaler.pkl",
            },
            "predictions": {"columns": PREDICTIONS, "schedule": "0 3 * * *"},
            **extra,
        },
    )  # fmt: skip


SLOW_SCORER = """
import time
from pathlib import Path

import numpy as np
from modelyard_runtimes.errors import BadRequest


class SlowScorer:
    \"\"\"Scores a user by age, slowly, writing the size of each call it gets.\"\"\"

    def load(self, artifacts_dir):
        self.calls = Path(artifacts_dir) / "calls.log"

    def predict(self, instances):
        with self.calls.open("a") as f:
            f.write(f"{len(instances)}\\n")
        if (instances["age"] == 59).any():
            raise BadRequest("age 59 is refused")
        time.sleep(0.3)
        return instances["age"].to_numpy(dtype=float)

    def postprocess(self, age):
        return {"score": age, "band": np.where(age > 40, "high", "low")}
"""


def slow_scorer(folder: Path, name: str = "slow-scorer") -> Path:
    """A features model over `profiles` in SQLite whose every call takes 0.3 s."""
    folder.mkdir(parents=True, exist_ok=True)
    fill_profiles(f"sqlite:///{folder}/features.db")
    (folder / "features.sql").write_text(FEATURES_SQL)
    return predictor_folder(
        folder, name, SLOW_SCORER, "SlowScorer",
        inputs=[{"name": "user_id", "datatype": "BYTES", "shape": [-1]}],
        extra={
            "features": {"sql": "features.sql", "source": "sqlite:///features.db",
                         "key": "user_id"},
            "predictions": {"columns": PREDICTIONS, "schedule": "0 3 * * *"},
        },
    )  # fmt: skip


def expected_scores(ids: list[str]) -> list[float]:
    """What SumScorer answers for known ids, computed here without the runtime."""
    scaler = StandardScaler().fit(PROFILES[["age", "spend"]])
    rows = PROFILES.set_index("user_id").loc[ids, ["age", "spend"]]
    return scaler.transform(rows).sum(axis=1).tolist()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Booby:
    """Unpickling this creates the file it names: the proof a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def booby_trapped(folder: Path, marker: Path) -> Path:
    """A `model.joblib` that would run code when unpickled."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.joblib"
    joblib.dump(Booby(marker), path)
    return path


def iris_classifier(path: Path) -> Path:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), path)
    return path
