"""Batch scoring for a model on any V2 runtime (sklearn, xgboost, lightgbm, huggingface,
custom...): no predictor class, only the declaration.

The model is loaded by its own MLServer runtime, the one that serves it, and each chunk
of ``features.sql`` goes through that runtime's ``predict`` as one V2 request: the
feature columns (``features.columns``, else the query's columns but the key, in its
order) make one input tensor of a row per entity, and each output the declaration maps
in ``predictions.outputs`` fills its prediction columns::

    predictions:
      columns: {user_id: BYTES, label: INT64, p_setosa: FP64, p_versicolor: FP64, p_virginica: FP64}
      outputs: {predict: label, predict_proba: [p_setosa, p_versicolor, p_virginica]}

An output of one value per row names one column; an output of one value per class
names a list of columns in the model's class order. The input tensor is the declared
signature's (``inputs``: its name and datatype), else the one the runtime gives
itself as it loads (huggingface: its task's, ``args``), else ``input-0`` in FP64 (BYTES for
text columns): the same request a client sends online gives the same numbers.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.model import MLModel
from mlserver.settings import ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse, RequestOutput
from pydantic import BaseModel, ConfigDict

from modelyard.declarations.integrity import verify_settings
from modelyard_runtimes.errors import ModelError, call_user
from modelyard_runtimes.features import FeaturesOptions, FeatureSource
from modelyard_runtimes.predictor.pipeline import PredictionsOptions, extra_options, model_folder
from modelyard_runtimes.tensors import NUMPY_DTYPES, cast_column

# The input a request carries when the declaration names none (MLServer's own default).
DEFAULT_INPUT = "input-0"
TEXT_KINDS = "OSU"


class RuntimeBatchOptions(BaseModel):
    """The batch blocks of ``parameters.extra``; the runtime's own keys pass untouched."""

    model_config = ConfigDict(extra="allow", frozen=True)

    features: FeaturesOptions | None = None
    predictions: PredictionsOptions = PredictionsOptions()

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> RuntimeBatchOptions:
        return extra_options(cls, settings)

    def outputs(self) -> dict[str, list[str]]:
        """``predictions.outputs``: each model output -> the columns it fills."""
        declared = (self.predictions.model_extra or {}).get("outputs") or {}
        return {o: [c] if isinstance(c, str) else list(c) for o, c in declared.items()}


def runtime_class(settings: ModelSettings, folder: Path) -> type[MLModel]:
    """The MLModel class the settings name, imported as MLServer does (the model
    folder on ``sys.path``, for a custom runtime's module beside the declaration)."""
    module, _, name = settings.implementation_.rpartition(".")
    sys.path.insert(0, str(folder))
    try:
        cls = getattr(importlib.import_module(module), name)
    finally:
        sys.path.remove(str(folder))
    if not (isinstance(cls, type) and issubclass(cls, MLModel)):
        raise TypeError(f"model '{settings.name}': {settings.implementation_} is not an MLModel")
    return cls


class RuntimePipeline:
    """A model's own runtime, fed chunks of features; the interface the batch scorer
    drives (``load``, ``features``, ``score``, ``close``), as ``PredictorPipeline``."""

    def __init__(self, settings: ModelSettings, options: RuntimeBatchOptions, folder: Path):
        self.settings = settings
        self.name = settings.name
        self.options = options
        self.folder = folder
        self.key = options.features.key if options.features else None
        self.outputs = options.outputs()
        self.columns = dict(options.predictions.columns)
        mapped = [c for cs in self.outputs.values() for c in cs]
        unknown = [c for c in mapped if c not in self.columns or c == self.key]
        if not self.outputs or unknown:
            raise ValueError(
                f"model '{self.name}': predictions.outputs must map the model's outputs to "
                f"predictions.columns other than the key (e.g. {{predict: label}})"
                + (f"; {', '.join(map(repr, unknown))} are not among them" if unknown else "")
            )
        declared = list(settings.inputs or [])
        self.input_name = declared[0].name if len(declared) == 1 else DEFAULT_INPUT
        self.input_datatype = declared[0].datatype if len(declared) == 1 else None
        # A signature of one dimension takes the texts as a vector ([n], not [n, 1]).
        self.input_rank = len(declared[0].shape) if len(declared) == 1 else 2
        self.model: MLModel | None = None
        self.features: FeatureSource | None = None
        self.inputs: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_settings(cls, settings: ModelSettings) -> RuntimePipeline:
        options = RuntimeBatchOptions.from_settings(settings)
        return cls(settings, options, model_folder(settings))

    def load(self) -> None:
        """Check the artifact and libraries, load the runtime, open the features."""
        verify_settings(self.settings)  # before anything is unpickled
        cls = runtime_class(self.settings, self.folder)
        self._loop = asyncio.new_event_loop()
        declared = bool(self.settings.inputs)
        self.model = cls(self.settings)
        self._loop.run_until_complete(self.model.load())
        if not declared:
            # No declared signature: the one the runtime gives itself as it loads
            # (huggingface: its task's, the texts in ``args``), else ``input-0``.
            own = list(self.model.settings.inputs or [])
            if len(own) == 1:
                self.input_name, self.input_datatype = own[0].name, own[0].datatype
                self.input_rank = len(own[0].shape)
        if self.options.features is None:
            return
        self.features = FeatureSource(self.name, self.options.features, self.folder)
        self.features.open()
        self.inputs = input_columns(self.name, self.features.columns, self.options.features)

    def close(self) -> None:
        if self.features is not None:
            self.features.close()
        if self._loop is not None:
            if self.model is not None:
                self._loop.run_until_complete(self.model.unload())
            self._loop.close()
            self._loop = None

    def request(self, features: pd.DataFrame) -> InferenceRequest:
        """The V2 request for rows of features: one input of a row per entity."""
        frame = features[self.inputs]
        text = self.input_datatype == "BYTES" or (
            self.input_datatype is None and any(frame[c].dtype.kind in TEXT_KINDS for c in frame)
        )
        if text:
            if len(self.inputs) != 1:
                raise ModelError(
                    f"model '{self.name}': text features go to the model one column at a "
                    f"time; name one in features.columns (the query gives {self.inputs})"
                )
            values = [str(v) for v in frame[self.inputs[0]].tolist()]
            tensor = StringCodec.encode_input(self.input_name, values, use_bytes=False)
            if self.input_rank == 1:
                tensor.shape = [len(values)]
        else:
            dtype = NUMPY_DTYPES[self.input_datatype or "FP64"]
            try:
                array = frame.to_numpy(dtype=dtype)
            except (TypeError, ValueError) as e:
                raise ModelError(
                    f"model '{self.name}': features {self.inputs} are not numbers: {e}"
                ) from None
            tensor = NumpyCodec.encode_input(self.input_name, array)
        return InferenceRequest(
            inputs=[tensor],
            outputs=[RequestOutput(name=o) for o in self.outputs],
        )

    def predict(self, request: InferenceRequest) -> InferenceResponse:
        assert self.model is not None and self._loop is not None, "load() first"
        model, loop = self.model, self._loop
        return call_user(
            self.name,
            f"{type(model).__name__}.predict",
            lambda r: loop.run_until_complete(model.predict(r)),
            request,
        )

    def score(self, features: pd.DataFrame) -> pd.DataFrame:
        """The key and the declared prediction columns for rows of features."""
        assert self.key is not None, "score() needs declared features"
        rows = len(features)
        scores: dict[str, np.ndarray] = {self.key: features[self.key].to_numpy()}
        if rows:
            response = self.predict(self.request(features))
            scores.update(self.columns_of(response, rows))
        else:
            scores.update({c: np.array([]) for cs in self.outputs.values() for c in cs})
        names = [self.key, *[c for c in self.columns if c != self.key]]
        return pd.DataFrame(
            {n: self._cast(n, scores[n]) for n in names if n in scores}, index=features.index
        )

    def columns_of(self, response: InferenceResponse, rows: int) -> dict[str, np.ndarray]:
        """The prediction columns of a response, as ``predictions.outputs`` maps them."""
        found = {o.name: o for o in response.outputs}
        columns: dict[str, np.ndarray] = {}
        for output, names in self.outputs.items():
            if output not in found:
                raise ModelError(
                    f"model '{self.name}' returned no output {output!r}, mapped in "
                    f"predictions.outputs; it returned {', '.join(map(repr, found))}"
                )
            tensor = found[output]
            if tensor.datatype == "BYTES":
                values = np.array(StringCodec.decode_output(tensor), dtype=object)
            else:
                values = NumpyCodec.decode_output(tensor)
            if values.size != rows * len(names):
                raise ModelError(
                    f"model '{self.name}': output {output!r} has {values.size} values for "
                    f"{rows} rows, not {len(names)} per row as predictions.outputs maps it "
                    f"({', '.join(names)})"
                )
            values = values.reshape(rows, len(names))
            columns.update({n: values[:, i] for i, n in enumerate(names)})
        return columns

    def _cast(self, name: str, values: np.ndarray) -> np.ndarray:
        datatype = self.columns.get(name, "BYTES" if name == self.key else None)
        return cast_column(self.name, name, values, datatype) if datatype else values


def input_columns(model: str, query: list[str], options: FeaturesOptions) -> list[str]:
    """The model's input columns: ``features.columns`` (each one the query returns),
    else every column of the query but the key, in its order."""
    if options.columns is None:
        return [c for c in query if c != options.key]
    absent = [c for c in options.columns if c not in query]
    if absent:
        raise RuntimeError(
            f"model '{model}': features.columns names {', '.join(map(repr, absent))}, which "
            f"{options.sql} does not return (it returns {', '.join(query)})"
        )
    return list(options.columns)


class RuntimeBatch:
    """What a batch run needs (``modelyard.batch.run.BatchRuntime``) for a model whose
    runtime has no batch pipeline of its own."""

    batch_options = RuntimeBatchOptions.from_settings
    batch_pipeline = RuntimePipeline.from_settings
