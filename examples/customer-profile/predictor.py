"""The customer-profile predictor: a user's gender profile as two percentiles.

`male_percentile` is the share of the training population (in percent) whose
probability of being male is at or below this user's; `female_percentile` the same
for female. Unlike raw probabilities, they rank users against the whole population
the same way in every request and every batch run, which is what a campaign tool
selects on ("the top 10% most likely female").
"""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np


class GenderPredictor:
    def load(self, artifacts_dir: str) -> None:
        bundle = joblib.load(Path(artifacts_dir) / "model.joblib")
        self.classifier = bundle["classifier"]
        self.male_column = bundle["male_column"]
        self.male_quantiles = bundle["male_quantiles"]
        self.female_quantiles = bundle["female_quantiles"]
        self.percents = np.linspace(0.0, 100.0, len(self.male_quantiles))

    def predict(self, instances: np.ndarray) -> np.ndarray:
        """P(male) for each user's preprocessed features."""
        return self.classifier.predict_proba(instances)[:, self.male_column]

    def postprocess(self, p_male: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "male_percentile": np.interp(p_male, self.male_quantiles, self.percents),
            "female_percentile": np.interp(1.0 - p_male, self.female_quantiles, self.percents),
        }
