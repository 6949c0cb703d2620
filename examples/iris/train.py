"""Train the iris classifier served from model-settings/iris.

Deterministic: the same scikit-learn version always writes an equivalent model.
Usage: python examples/iris/train.py [OUT_DIR]
"""

import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[2]


def train(out_dir: Path) -> Path:
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000, random_state=0).fit(x, y)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.joblib"
    joblib.dump(model, path)
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "model-settings" / "iris"
    print(f"wrote {train(out)}")
