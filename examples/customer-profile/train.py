"""Train the customer-profile example: a preprocess object and a gender classifier.

Reads the features with the same `features.sql` the model serves with, fits

- `preprocess.pkl`: a scikit-learn ColumnTransformer (impute + scale the numbers,
  one-hot the country), the model's `features.preprocess`;
- `model.joblib`: the classifier, with the quantiles of its P(male) and P(female)
  over the training population, from which the predictor turns a probability into
  a percentile;

and pins both in `model.yaml` (`model.sha256`, `features.preprocess_sha256`,
`model.versions`), so a different file or library refuses to load; and writes
`reference.parquet`, a sample of the training features for drift. Deterministic;
rerun by `make models`.

    python train.py        # after python make_data.py
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import sklearn
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

HERE = Path(__file__).resolve().parent
KEY = "user_id"
CATEGORICAL = ["country"]
QUANTILES = 1001  # percentile resolution: a tenth of a point
REFERENCE_ROWS = 10_000


def load_training_data(db: Path) -> tuple[pd.DataFrame, np.ndarray]:
    with sqlite3.connect(db) as conn:
        features = pd.read_sql_query((HERE / "features.sql").read_text(), conn)
        labels = pd.read_sql_query("SELECT user_id, gender FROM users", conn)
    data = features.merge(labels, on=KEY, validate="one_to_one").sort_values(KEY)
    return data.drop(columns=["gender"]), (data["gender"] == "male").to_numpy()


def pin(declaration: Path, hashes: dict[str, str], versions: dict[str, str]) -> None:
    """Write the artifacts' hashes and training libraries into model.yaml, in place."""
    text = declaration.read_text()
    for key, sha256 in hashes.items():
        text = re.sub(rf"(?m)^(  {key}: ).*$", rf"\g<1>{sha256}", text)
    pinned = ", ".join(f"{name}: {v!r}".replace("'", '"') for name, v in versions.items())
    text = re.sub(r"(?m)^(  versions: ).*$", rf"\g<1>{{{pinned}}}", text)
    declaration.write_text(text)


def main() -> None:
    features, is_male = load_training_data(HERE / "features.db")
    x = features.drop(columns=[KEY])
    numeric = [c for c in x.columns if c not in CATEGORICAL]
    x_train, x_test, y_train, y_test = train_test_split(
        x, is_male, test_size=0.2, random_state=0, stratify=is_male
    )

    preprocess = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
        ]
    )
    classifier = LogisticRegression(max_iter=1000)
    classifier.fit(preprocess.fit_transform(x_train), y_train)
    accuracy = classifier.score(preprocess.transform(x_test), y_test)

    male_column = list(classifier.classes_).index(True)
    p_male = classifier.predict_proba(preprocess.transform(x_train))[:, male_column]
    levels = np.linspace(0.0, 1.0, QUANTILES)
    joblib.dump(preprocess, HERE / "preprocess.pkl")
    joblib.dump(
        {
            "classifier": classifier,
            "male_column": male_column,
            "male_quantiles": np.quantile(p_male, levels),
            "female_quantiles": np.quantile(1.0 - p_male, levels),
        },
        HERE / "model.joblib",
    )
    hashes = {
        "sha256": hashlib.sha256((HERE / "model.joblib").read_bytes()).hexdigest(),
        "preprocess_sha256": hashlib.sha256((HERE / "preprocess.pkl").read_bytes()).hexdigest(),
    }
    pin(HERE / "model.yaml", hashes, {"scikit-learn": sklearn.__version__})
    # The drift reference (monitoring.reference): a sample of the training features,
    # the columns of features.sql that batch runs read.
    sample = x_train.sample(min(len(x_train), REFERENCE_ROWS), random_state=0)
    sample.to_parquet(HERE / "reference.parquet", index=False)
    print(f"model.joblib: accuracy {accuracy:.3f} on {len(y_test)} held-out users")


if __name__ == "__main__":
    main()
