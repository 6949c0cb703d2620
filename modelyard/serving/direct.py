"""Models answered without their library's per-call layers, where the library's
answers are known to be the same.

**XGBoost.** MLServer's runtime predicts through XGBoost's scikit-learn wrapper, whose
``predict`` enters XGBoost's global configuration context twice per call (each a JSON
round trip through the C API) around the booster's ``inplace_predict``, which then
builds its arguments' JSON, looks the input over for a dozen data frame types and wraps
the result in a class it defines per call: for one row, four fifths of the prediction's
time. Here the estimator's ``predict`` and ``predict_proba`` make the C call
``inplace_predict`` ends in, with the arguments the wrapper would pass, fixed at load
(the iteration range early stopping chose, the missing value), and turn its values
into classes and probabilities as the wrapper does.

**scikit-learn linear models.** A linear model's ``predict`` is one matrix product,
but scikit-learn first validates the input (array namespaces, data frame libraries,
feature names, dtype, finiteness): for one row, nine tenths of its time. Here
``predict`` checks what that validation would reject (shape, dtype, finiteness) and
makes the product itself.

**LightGBM.** ``Booster.predict`` builds a new predictor object per call (a deep copy
of its keyword arguments, the booster's parameters turned into a string), then looks
the input over for a dozen data types and asks the C API how many values to expect,
before the one C call that predicts. Here ``predict`` makes that C call
(``LGBM_BoosterPredictForMat``) with what the booster would pass, fixed at load (the
best iteration, no prediction parameters), and shapes its values as the booster does.

The estimator keeps its class, so the runtime's own checks see no difference. The
direct methods are used only if they give the library's answers on probes at load,
and any call they do not cover (an input that is not a float array of the model's
width, extra arguments, a model fitted on named features) goes to the library.
``MODELYARD_DIRECT_PREDICT=off`` leaves every model to its library.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
import threading
from typing import Any

import numpy as np
from mlserver.model import MLModel

from modelyard.mlserver_internals import runtime_model

logger = logging.getLogger(__name__)

DIRECT_ENV = "MODELYARD_DIRECT_PREDICT"
# A runtime that predicts directly itself (the onnx runtime's session.run) offers
# ``predict_arrays(name, datatype, array)``, returning ``[(output name, array), ...]``,
# the answer its ``predict`` gives, only once it checked so on probes at its load; the
# model's gRPC lane (`lanes.py`) writes all of them.
ARRAYS_METHOD = "predict_arrays"

SKLEARN_RUNTIME = ("mlserver_sklearn", "SKLearnModel")
XGBOOST_RUNTIME = ("mlserver_xgboost", "XGBoostModel")
LIGHTGBM_RUNTIME = ("mlserver_lightgbm", "LightGBMModel")
FLOATS = (np.dtype("<f4"), np.dtype("<f8"))
# A C-contiguous matrix as XGBoost's C API takes it (NumPy's array interface, in JSON).
DENSE = b'{"data":[%d,true],"shape":[%d,%d],"strides":null,"typestr":"%s","version":3}'


class _Direct:
    """Direct methods for one estimator; calls they do not cover go to its class's."""

    methods: tuple[str, ...] = ("predict",)

    def __init__(self, estimator: Any, width: int):
        self._estimator = estimator
        self._cls = type(estimator)
        self._width = width

    def _library(self, method: str, x: Any, kwargs: dict[str, Any]) -> Any:
        return getattr(self._cls, method)(self._estimator, x, **kwargs)

    def _covers(self, x: Any, kwargs: dict[str, Any]) -> bool:
        return (
            not kwargs
            and isinstance(x, np.ndarray)
            and x.ndim == 2
            and x.shape[0] > 0
            and x.shape[1] == self._width
            and x.dtype in FLOATS
        )

    def agrees(self) -> bool:
        """The library's answers and ours, equal in value, type and shape on probes."""
        for dtype in FLOATS:
            probe = np.linspace(-3.0, 3.0, 5 * self._width, dtype=dtype)
            for x in (probe.reshape(5, self._width), probe[: self._width].reshape(1, -1)):
                for method in self.methods:
                    try:
                        theirs = self._library(method, x, {})
                    except Exception:  # e.g. predict_proba of a multi:softmax model
                        continue
                    ours = getattr(self, method)(x)
                    if theirs.dtype != ours.dtype or not np.array_equal(theirs, ours):
                        return False
        return True


class _XGBoost(_Direct):
    def __init__(self, estimator: Any):
        import xgboost as xgb
        from xgboost.core import _LIB, _check_call, _ProxyDMatrix, c_bst_ulong
        from xgboost.sklearn import _cls_predict_proba

        self._booster = estimator.get_booster()
        super().__init__(estimator, self._booster.num_features())
        self._classifier = isinstance(estimator, xgb.XGBClassifier)
        self.methods = ("predict", "predict_proba") if self._classifier else ("predict",)
        # Fixed at load, like the arguments: the wrapper's decision rule for this model.
        self._softmax = estimator.objective == "multi:softmax"
        self._n_classes = getattr(estimator, "n_classes_", 0)
        self._proba = _cls_predict_proba
        # inplace_predict's C call and its arguments, as it builds them on each call.
        self._predict_dense = _LIB.XGBoosterPredictFromDense
        self._check_call = _check_call
        self._ulong = c_bst_ulong
        # The C call wraps the input in a proxy matrix, a new one per call unless given
        # one, and each new one reads the cgroup's CPU quota from files: one per thread.
        self._new_proxy = _ProxyDMatrix
        self._proxies = threading.local()
        begin, end = estimator._get_iteration_range(None)
        self._config = json.dumps(
            {
                "type": 0,  # values, not margins
                "training": False,
                "iteration_begin": int(begin),
                "iteration_end": int(end),
                "missing": estimator.missing,
                "strict_shape": False,
                "cache_id": 0,
            }
        ).encode()

    def _values(self, x: np.ndarray) -> np.ndarray:
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        proxy = getattr(self._proxies, "proxy", None)
        if proxy is None:
            proxy = self._proxies.proxy = self._new_proxy()
        shape = ctypes.POINTER(self._ulong)()
        dims = self._ulong()
        values = ctypes.POINTER(ctypes.c_float)()
        self._check_call(
            self._predict_dense(
                self._booster.handle,
                DENSE % (x.ctypes.data, x.shape[0], x.shape[1], x.dtype.str.encode()),
                self._config,
                proxy.handle,  # holding no base margin
                ctypes.byref(shape),
                ctypes.byref(dims),
                ctypes.byref(values),
            )
        )
        # The values live in the booster's buffer until its next prediction: copied.
        return np.ctypeslib.as_array(values, shape=tuple(shape[: dims.value])).copy()

    def predict(self, x: Any, **kwargs: Any) -> Any:
        if not self._covers(x, kwargs):
            return self._library("predict", x, kwargs)
        values = self._values(x)
        if not self._classifier:
            return values
        if values.ndim > 1 and self._n_classes != 2:  # class probabilities
            return np.argmax(values, axis=1)
        if values.ndim > 1 and values.shape[1] != 1:  # multi-label
            multi = np.zeros(values.shape)
            multi[values > 0.5] = 1
            return multi
        if self._softmax:  # the booster gives classes
            return values.astype(np.int32)
        labels = np.repeat(0, values.shape[0])
        labels[values > 0.5] = 1
        return labels

    def predict_proba(self, x: Any, **kwargs: Any) -> Any:
        if not self._covers(x, kwargs) or self._softmax:
            return self._library("predict_proba", x, kwargs)
        return self._proba(self._n_classes, self._values(x), np.vstack)


class _LightGBM(_Direct):
    def __init__(self, booster: Any):
        from lightgbm.basic import _LIB, _safe_call

        super().__init__(booster, booster.num_feature())
        self._predict_mat = _LIB.LGBM_BoosterPredictForMat
        self._safe_call = _safe_call
        # Per row: one value per class (num_class models per iteration), else one.
        self._per_row = booster.num_model_per_iteration()
        # What Booster.predict passes without arguments: the best iteration (0: all).
        self._iterations = ctypes.c_int(booster.best_iteration)

    def predict(self, x: Any, **kwargs: Any) -> Any:
        if not self._covers(x, kwargs):
            return self._library("predict", x, kwargs)
        if not x.flags.c_contiguous:
            x = np.ascontiguousarray(x)
        rows = x.shape[0]
        values = np.empty(rows * self._per_row, dtype=np.float64)
        written = ctypes.c_int64(0)
        self._safe_call(
            self._predict_mat(
                self._estimator._handle,
                x.ctypes.data_as(ctypes.c_void_p),
                ctypes.c_int(0 if x.dtype == np.float32 else 1),  # C_API_DTYPE_FLOAT32/64
                ctypes.c_int32(rows),
                ctypes.c_int32(x.shape[1]),
                ctypes.c_int(1),  # row major
                ctypes.c_int(0),  # C_API_PREDICT_NORMAL
                ctypes.c_int(0),  # start iteration
                self._iterations,
                b"",  # no prediction parameters
                ctypes.byref(written),
                values.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
            )
        )
        if written.value != values.size:
            return self._library("predict", x, kwargs)
        return values.reshape(rows, -1) if self._per_row != 1 else values


class _Linear(_Direct):
    def __init__(self, estimator: Any, classifier: bool):
        super().__init__(estimator, int(estimator.n_features_in_))
        self._coef = estimator.coef_.T if estimator.coef_.ndim == 2 else estimator.coef_
        self._intercept = estimator.intercept_
        self._classes = estimator.classes_ if classifier else None

    def predict(self, x: Any, **kwargs: Any) -> Any:
        # What validation rejects (or, for NaN and infinities, rejects unless told to
        # assume finite input) goes to scikit-learn, to be rejected or answered there.
        if not self._covers(x, kwargs) or not np.isfinite(x).all():
            return self._library("predict", x, kwargs)
        scores = x @ self._coef + self._intercept
        if self._classes is None:
            return scores
        if scores.ndim > 1 and scores.shape[1] == 1:
            scores = scores.reshape(-1)
        indices = (scores > 0).astype(np.intp) if scores.ndim == 1 else scores.argmax(axis=1)
        return self._classes.take(indices, axis=0)


def _runtime(spec: tuple[str, str]) -> type[MLModel] | None:
    # The runtime's class if its module is imported: a model of it has imported it, and
    # no other model needs it imported to tell.
    module = sys.modules.get(spec[0])
    return getattr(module, spec[1]) if module is not None else None


def runtime_classes() -> tuple[type[MLModel], ...]:
    """MLServer's scikit-learn, XGBoost and LightGBM runtime classes, those imported."""
    specs = (SKLEARN_RUNTIME, XGBOOST_RUNTIME, LIGHTGBM_RUNTIME)
    return tuple(c for c in map(_runtime, specs) if c is not None)


def _of_runtime(model: MLModel, spec: tuple[str, str]) -> bool:
    cls = _runtime(spec)
    return cls is not None and isinstance(model, cls)


def _xgboost(model: MLModel) -> _Direct | None:
    if not _of_runtime(model, XGBOOST_RUNTIME):
        return None  # not an XGBoost model
    import xgboost as xgb

    estimator = runtime_model(model)
    if type(estimator) not in (xgb.XGBClassifier, xgb.XGBRegressor):
        return None  # a subclass may predict its own way
    if getattr(estimator, "booster", None) == "gblinear":
        return None  # the wrapper does not predict gblinear in place either
    return _XGBoost(estimator)


def _lightgbm(model: MLModel) -> _Direct | None:
    if not _of_runtime(model, LIGHTGBM_RUNTIME):
        return None
    import lightgbm as lgb

    booster = runtime_model(model)
    if type(booster) is not lgb.Booster:
        return None  # a subclass may predict its own way
    return _LightGBM(booster)


def _linear(model: MLModel) -> _Direct | None:
    if not _of_runtime(model, SKLEARN_RUNTIME):
        return None
    from sklearn.linear_model import Ridge
    from sklearn.linear_model._base import (
        LinearClassifierMixin,
        LinearModel,
        MultiOutputLinearModel,
    )

    estimator = runtime_model(model)
    cls = type(estimator)
    if hasattr(estimator, "feature_names_in_"):
        return None  # fitted on a data frame: scikit-learn checks the names it is given
    if not isinstance(getattr(estimator, "coef_", None), np.ndarray):
        return None  # e.g. sparsified: scikit-learn's sparse product
    # Only where predict is the one-product predict these classes define (the other two
    # override LinearModel's for their docstrings alone).
    if (
        cls.predict is LinearClassifierMixin.predict
        and cls.decision_function is LinearClassifierMixin.decision_function
    ):
        return _Linear(estimator, classifier=True)
    products = (LinearModel.predict, MultiOutputLinearModel.predict, Ridge.predict)
    if cls.predict in products and cls._decision_function is LinearModel._decision_function:
        return _Linear(estimator, classifier=False)
    return None


def predict_directly(model: MLModel) -> bool:
    """Give a loaded model's estimator the direct methods of this module, where they
    cover it and agree with its library at load; True when it has them."""
    if os.environ.get(DIRECT_ENV) == "off":
        return False
    if callable(getattr(model, ARRAYS_METHOD, None)):
        return True  # its runtime predicts directly, checked on probes at its load
    try:
        direct = _xgboost(model) or _lightgbm(model) or _linear(model)
        if direct is None:
            return False
        agrees = direct.agrees()
    except Exception as e:  # a library whose internals differ from the ones this reads
        logger.info("model '%s': predicting through its library (%s)", model.name, e)
        return False
    if not agrees:
        logger.info("model '%s': predicting through its library (direct answers differ)",
                    model.name)  # fmt: skip
        return False
    for method in direct.methods:
        setattr(direct._estimator, method, getattr(direct, method))
    kind = type(direct._estimator).__name__
    logger.info("model '%s': predicting directly (%s)", model.name, kind)
    return True
