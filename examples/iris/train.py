"""Train the iris classifier served from model-settings/iris.

Deterministic: the same scikit-learn version always writes an equivalent model. Writes
reference.parquet next to it, the training data drift is measured against.
Usage: python examples/iris/train.py [OUT_DIR]
"""

import sys
from pathlib import Path

import joblib
import pandas as pd
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[2]


def train(out_dir: Path) -> Path:
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000, random_state=0).fit(x, y)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.joblib"
    joblib.dump(model, path)
    # The drift reference (monitoring.reference): the training features, one column per
    # column of the input tensor (input-0[0] ... input-0[3]), and the predictions.
    reference = pd.DataFrame(x, columns=[f"input-0[{i}]" for i in range(x.shape[1])])
    reference["predict"] = model.predict(x)
    reference.to_parquet(out_dir / "reference.parquet", index=False)
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "model-settings" / "iris"
    print(f"wrote {train(out)}")
