"""The predictor runtime's work, apart from V2 and the event loop.

The server (``PredictorRuntime``) and the batch scorer both drive a ``PredictorPipeline``,
so a model predicts the same way online and in batch:

    pipeline = PredictorPipeline.from_settings(settings)
    pipeline.load()
    features = pipeline.fetch(["u1", "u2"])       # or a chunk of features.sql
    predictions = pipeline.score(features)       # key + prediction columns
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import joblib
import numpy as np
import pandas as pd
from mlserver.settings import ModelSettings
from mlserver.types import MetadataTensor
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from modelyard.declarations.integrity import verify_settings, verify_sha256
from modelyard.imports import load_class
from modelyard.mlserver_internals import settings_folder
from modelyard.serving.tensors import NUMPY_DTYPES
from modelyard_runtimes.errors import ModelError, call_user
from modelyard_runtimes.features import FeaturesOptions, FeatureSource
from modelyard_runtimes.tensors import (
    DEFAULT_OUTPUT,
    MISSING_OUTPUT,
    align,
    cast_column,
    column,
    named_results,
)

logger = logging.getLogger("modelyard.runtimes.predictor")

# The methods of a predictor class, in the order they run; only predict is required.
LOAD_METHOD = "load"
PREPROCESS_METHOD = "preprocess"
PREDICT_METHOD = "predict"
POSTPROCESS_METHOD = "postprocess"


class PredictionsOptions(BaseModel):
    """The declaration's ``predictions`` block. The batch scorer's keys (schedule,
    store, ...) live there too and are its business: they pass through untouched."""

    model_config = ConfigDict(extra="allow", frozen=True)

    columns: dict[str, str] = {}

    @field_validator("columns")
    @classmethod
    def _v2_datatypes(cls, columns: dict[str, str]) -> dict[str, str]:
        for name, datatype in columns.items():
            if datatype not in NUMPY_DTYPES:
                raise ValueError(
                    f"column {name!r} has datatype {datatype!r}; use one of "
                    + ", ".join(NUMPY_DTYPES)
                )
        return columns


class PredictorOptions(BaseModel):
    """``parameters.extra`` of a predictor model's settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    predictor: str  # "predictor.py:GenderPredictor" or "package.module:Class"
    features: FeaturesOptions | None = None
    predictions: PredictionsOptions = PredictionsOptions()
    parameters: dict[str, Any] = {}  # keyword arguments of the predictor class
    modelyard: dict[str, Any] = {}  # sha256 and versions: see modelyard.declarations.integrity

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> PredictorOptions:
        return extra_options(cls, settings)


OptionsT = TypeVar("OptionsT", bound=BaseModel)


def extra_options(options: type[OptionsT], settings: ModelSettings) -> OptionsT:
    """A runtime's options, parsed once from ``parameters.extra``; every problem is named
    by its key, for the model's status."""
    extra = (settings.parameters.extra if settings.parameters else None) or {}
    try:
        return options.model_validate(extra)
    except ValidationError as e:
        problems = "; ".join(
            f"parameters.extra.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in e.errors()
        )
        raise ValueError(f"model '{settings.name}': {problems}") from None


def model_folder(settings: ModelSettings) -> Path:
    """The folder of the settings file, which relative paths are relative to."""
    folder = settings_folder(settings)
    if folder is None:
        raise ValueError(
            f"model '{settings.name}': its settings have no source file, so relative paths "
            "cannot be resolved; load them with modelyard.declarations.folders.load_model_folder"
        )
    return folder


class PredictorPipeline:
    """Load a model folder's predictor class (and features source and transformer),
    and run requests through ``preprocess -> predict -> postprocess``.

    Exceptions raised by the user's code come out as V2 errors (see
    ``modelyard_runtimes.errors``). Not thread-safe: the server calls the user's code
    from one thread, as the batch scorer does.
    """

    def __init__(
        self,
        settings: ModelSettings,
        options: PredictorOptions,
        folder: Path,
    ):
        self.settings = settings
        self.name = settings.name
        self.options = options
        self.folder = folder
        self.outputs: list[MetadataTensor] = list(settings.outputs or [])
        self.key = options.features.key if options.features else None
        if self.key is not None and MISSING_OUTPUT in options.predictions.columns:
            raise ValueError(
                f"model '{self.name}': predictions.columns may not name {MISSING_OUTPUT!r}; "
                "the runtime adds it to flag unknown ids"
            )
        # Declared datatypes: the signature's outputs, else the prediction columns.
        self.datatypes = {
            **options.predictions.columns,
            **{o.name: o.datatype for o in self.outputs},
        }
        candidates = [o.name for o in self.outputs] + list(options.predictions.columns)
        self.default_output = next(
            (n for n in candidates if n not in (self.key, MISSING_OUTPUT)), DEFAULT_OUTPUT
        )
        self.predictor: Any = None
        self.features: FeatureSource | None = None
        self.transformer: Any = None
        self.transformer_file = options.features.preprocess if options.features else None

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> PredictorPipeline:
        return cls(settings, PredictorOptions.from_settings(settings), model_folder(settings))

    # -- loading ---------------------------------------------------------------------
    def load(self) -> None:
        """Check the artifact and libraries, then load the class, features and transformer."""
        # Before anything is unpickled or imported: loading a pickle runs code.
        verify_settings(self.settings)
        cls = load_class(self.options.predictor, self.folder)
        if not callable(getattr(cls, PREDICT_METHOD, None)):
            raise TypeError(
                f"model '{self.name}': {self.options.predictor} has no {PREDICT_METHOD}"
                "(self, instances) method; add one"
            )
        try:
            self.predictor = cls(**self.options.parameters)
            if callable(getattr(self.predictor, LOAD_METHOD, None)):
                self.predictor.load(str(self.folder))
        except Exception as e:
            raise RuntimeError(
                f"model '{self.name}': loading {self.options.predictor} failed: "
                f"{type(e).__name__}: {e}"
            ) from e
        if self.options.features is not None:
            self._load_features(self.options.features)
        logger.info("model '%s': %s loaded from %s", self.name, cls.__name__, self.folder)

    def _load_features(self, options: FeaturesOptions) -> None:
        if options.preprocess:
            path = self.folder / options.preprocess
            if not path.is_file():
                raise FileNotFoundError(
                    f"model '{self.name}': features.preprocess {path} does not exist; "
                    "add it to the model folder or remove features.preprocess"
                )
            if options.preprocess_sha256:
                verify_sha256(self.name, path, options.preprocess_sha256)
            self.transformer = joblib.load(path)
            if not callable(getattr(self.transformer, "transform", None)):
                raise TypeError(
                    f"model '{self.name}': {options.preprocess} holds a "
                    f"{type(self.transformer).__name__}, which has no transform(); save the "
                    "fitted transformer (e.g. a scikit-learn ColumnTransformer) there"
                )
        self.features = FeatureSource(self.name, options, self.folder)
        self.features.open()

    def close(self) -> None:
        if self.features is not None:
            self.features.close()

    # -- predicting ------------------------------------------------------------------
    def _step(self, method: str, value: Any) -> Any:
        fn = getattr(self.predictor, method, None)
        if fn is None:
            return value
        return call_user(self.name, f"{type(self.predictor).__name__}.{method}", fn, value)

    def run(self, inputs: Any) -> Any:
        """The user's code on decoded inputs: preprocess (if any), predict, postprocess (if any)."""
        assert self.predictor is not None, "load() first"
        instances = self._step(PREPROCESS_METHOD, inputs)
        return self._step(POSTPROCESS_METHOD, self._step(PREDICT_METHOD, instances))

    def fetch(self, ids: Sequence[Any]) -> pd.DataFrame:
        """The features of the known ids (see ``FeatureSource.fetch``)."""
        if self.features is None:
            raise ValueError(f"model '{self.name}' declares no features to fetch")
        return self.features.fetch(ids)

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        """Predictions for rows of features (the key column and the columns of
        ``features.sql``): the key and the prediction columns, one row per input row,
        in the declared datatypes.

        The key identifies the row and is kept out of the model's way: the transformer
        (if declared) gets the other columns, and the class's methods get its output.
        """
        assert self.key is not None, "score() needs declared features"
        if features.empty:
            return self._empty_scores()
        inputs: Any = features.drop(columns=[self.key])
        if self.transformer is not None:
            where = f"{self.transformer_file} transform"
            inputs = call_user(self.name, where, self.transformer.transform, inputs)
        results = named_results(self.name, self.run(inputs), self.default_output)
        rows = len(features)
        scores = {self.key: features[self.key].to_numpy()}
        scores.update(
            {n: column(self.name, n, v, rows) for n, v in results.items() if n != self.key}
        )
        declared = list(self.options.predictions.columns)
        if declared:
            absent = [n for n in declared if n not in scores]
            if absent:
                raise ModelError(
                    f"model '{self.name}' returned no {', '.join(repr(n) for n in absent)}, "
                    f"declared in predictions.columns; it returned "
                    f"{', '.join(repr(n) for n in results)}"
                )
            order = declared if self.key in declared else [self.key, *declared]
            scores = {n: scores[n] for n in order}
        return pd.DataFrame({n: self._cast(n, v) for n, v in scores.items()}, index=features.index)

    def align(self, ids: Sequence[Any], scores: pd.DataFrame) -> pd.DataFrame:
        """``scores`` as one row per requested id, in request order, with ``missing``
        true for the ids the features source does not know."""
        assert self.key is not None, "align() needs declared features"
        # The ids as score() wrote the key: in its declared datatype.
        return align(self._cast(self.key, np.asarray(ids, dtype=object)), scores, self.key)

    def predict_ids(self, ids: Sequence[Any]) -> pd.DataFrame:
        """fetch + score + align: what the server answers for ``ids``."""
        return self.align(ids, self.score(self.fetch(ids)))

    def _cast(self, name: str, values: np.ndarray) -> np.ndarray:
        datatype = self.datatypes.get(name)
        return cast_column(self.name, name, values, datatype) if datatype else values

    def _empty_scores(self) -> pd.DataFrame:
        declared = list(self.options.predictions.columns)
        names = declared if self.key in declared else [self.key, *declared]
        return pd.DataFrame(
            {n: np.array([], dtype=NUMPY_DTYPES[self.datatypes.get(n, "BYTES")]) for n in names}
        )
