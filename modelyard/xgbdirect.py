"""MLServer's XGBoost runtime, answered through the booster directly.

The runtime predicts through XGBoost's scikit-learn wrapper, whose ``predict`` enters
XGBoost's global configuration context twice per call (each a JSON round trip through
the C API) around the booster's ``inplace_predict``: for one row, that is half the
prediction's time. Here the estimator's ``predict`` and ``predict_proba`` call
``inplace_predict`` with the arguments the wrapper would pass, fixed at load (the
iteration range early stopping chose, the missing value), and turn its values into
classes and probabilities as the wrapper does.

The estimator keeps its class, so the runtime's own checks see no difference. The
direct methods are used only if they give the wrapper's answers on a probe at load,
and any call they do not cover (an input that is not a numpy array, extra arguments)
goes to the wrapper.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np
from mlserver.model import MLModel

logger = logging.getLogger("modelyard.xgbdirect")


class _Direct:
    def __init__(self, estimator: Any):
        import xgboost as xgb
        from xgboost.sklearn import _cls_predict_proba

        self._estimator = estimator
        self._cls = type(estimator)
        self._booster = estimator.get_booster()
        self._range = estimator._get_iteration_range(None)
        self._missing = estimator.missing
        self._classifier = isinstance(estimator, xgb.XGBClassifier)
        # Fixed at load, like the arguments: the wrapper's decision rule for this model.
        self._softmax = estimator.objective == "multi:softmax"
        self._n_classes = getattr(estimator, "n_classes_", 0)
        self._proba = _cls_predict_proba

    def _values(self, x: np.ndarray) -> np.ndarray:
        return self._booster.inplace_predict(
            x, iteration_range=self._range, predict_type="value", missing=self._missing
        )

    def predict(self, x: Any, **kwargs: Any) -> Any:
        if kwargs or not isinstance(x, np.ndarray):
            return self._cls.predict(self._estimator, x, **kwargs)
        values = self._values(x)
        if not self._classifier:
            return values
        if values.ndim > 1 and self._n_classes != 2:  # class probabilities
            return np.argmax(values, axis=1)
        if values.ndim > 1 and values.shape[1] != 1:  # multi-label
            labels = np.zeros(values.shape)
            labels[values > 0.5] = 1
            return labels
        if self._softmax:  # the booster gives classes
            return values.astype(np.int32)
        labels = np.repeat(0, values.shape[0])
        labels[values > 0.5] = 1
        return labels

    def predict_proba(self, x: Any, **kwargs: Any) -> Any:
        if kwargs or not isinstance(x, np.ndarray) or self._softmax:
            return self._cls.predict_proba(self._estimator, x, **kwargs)
        return self._proba(self._n_classes, self._values(x), np.vstack)

    @property
    def methods(self) -> tuple[str, ...]:
        """The estimator's methods answered here."""
        return ("predict", "predict_proba") if self._classifier else ("predict",)

    def agrees(self) -> bool:
        """The wrapper's answers and ours, equal in value, type and shape on a probe."""
        width = self._booster.num_features()
        probe = np.linspace(-3.0, 3.0, 5 * width, dtype=np.float32).reshape(5, width)
        for method in self.methods:
            try:
                theirs = getattr(self._cls, method)(self._estimator, probe)
            except Exception:  # e.g. predict_proba of a multi:softmax model: theirs serves
                continue
            ours = getattr(self, method)(probe)
            if theirs.dtype != ours.dtype or not np.array_equal(theirs, ours):
                return False
        return True


def predict_directly(model: MLModel) -> bool:
    """Give a loaded MLServer XGBoost model's estimator the direct ``predict`` and
    ``predict_proba``; True when it has them."""
    runtime = sys.modules.get("mlserver_xgboost")
    if runtime is None or not isinstance(model, runtime.XGBoostModel):
        return False  # not an XGBoost model (and no need to import XGBoost to tell)
    import xgboost as xgb

    estimator = getattr(model, "_model", None)
    if type(estimator) not in (xgb.XGBClassifier, xgb.XGBRegressor):
        return False  # a subclass may predict its own way
    if getattr(estimator, "booster", None) == "gblinear":
        return False  # the wrapper does not predict gblinear in place either
    try:
        direct = _Direct(estimator)
        agrees = direct.agrees()
    except Exception as e:  # an XGBoost whose wrapper differs from the one this reads
        logger.info("model '%s': predicting through the wrapper (%s)", model.name, e)
        return False
    if not agrees:
        logger.info("model '%s': predicting through the wrapper (direct answers differ)",
                    model.name)  # fmt: skip
        return False
    for method in direct.methods:
        setattr(estimator, method, getattr(direct, method))
    logger.info("model '%s': predicting through the XGBoost booster directly", model.name)
    return True
