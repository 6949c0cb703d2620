"""Train the XGBoost breast-cancer classifier served from model-settings/breast-cancer.

Saved in XGBoost's native UBJSON format (not a pickle), so it loads in any
XGBoost version that reads the format and runs no code on load. Writes
reference.parquet next to it, the training data drift is measured against.
Usage: python examples/breast-cancer/train.py [OUT_DIR]
"""

import sys
from pathlib import Path

import pandas as pd
import xgboost as xgb
from sklearn.datasets import load_breast_cancer

ROOT = Path(__file__).resolve().parents[2]


def train(out_dir: Path) -> Path:
    x, y = load_breast_cancer(return_X_y=True)
    model = xgb.XGBClassifier(
        n_estimators=50, max_depth=3, learning_rate=0.3, random_state=0, n_jobs=1
    ).fit(x, y)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.ubj"
    model.save_model(path)
    # The drift reference (monitoring.reference): the training features, one column per
    # column of the input tensor (input-0[0] ... input-0[29]), and the predictions.
    reference = pd.DataFrame(x, columns=[f"input-0[{i}]" for i in range(x.shape[1])])
    reference["predict"] = model.predict(x)
    reference.to_parquet(out_dir / "reference.parquet", index=False)
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "model-settings" / "breast-cancer"
    print(f"wrote {train(out)}")
