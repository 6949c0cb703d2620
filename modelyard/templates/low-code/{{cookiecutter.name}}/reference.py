"""Write reference.parquet, the sample drift is measured against (monitoring.reference).

Run it where the model is trained, on the training data: one column per feature as
requests carry it (column i of input-0 is `input-0[i]`), and the predictions made of
them. The rows below stand in for your training data until you have it.

    python reference.py
"""

from pathlib import Path

import numpy as np
import pandas as pd
from predictor import {{ cookiecutter.class_name }}

HERE = Path(__file__).resolve().parent
ROWS = 10_000  # enough for drift statistics; a sample of a larger training set will do


def training_features() -> np.ndarray:
    """Replace with your training data: ROWS rows of the 4 features of input-0."""
    return np.random.default_rng(0).normal(size=(ROWS, 4))


def main() -> None:
    x = training_features()
    model = {{ cookiecutter.class_name }}()
    model.load(str(HERE))
    outputs = model.postprocess(model.predict(model.preprocess(x)))
    reference = pd.DataFrame(x, columns=[f"input-0[{i}]" for i in range(x.shape[1])])
    for name, values in outputs.items():
        reference[name] = np.asarray(values).reshape(len(x))
    reference.to_parquet(HERE / "reference.parquet", index=False)
    print(f"wrote {HERE / 'reference.parquet'}: {len(reference):,} rows")


if __name__ == "__main__":
    main()
