"""``runtime: mlflow``: an MLflow model folder (the one holding ``MLmodel``), served by
MLServer's MLflow runtime through its pyfunc flavour, with two additions:

- **The MLmodel's signature is the V2 signature** when the declaration has none:
  requests are checked against it before the model runs, as against a declared one
  (MLServer's runtime only shows it in the model's metadata).
- **The native flavour, where MLflow saved one modelyard serves directly**
  (``sklearn``, ``xgboost``, ``lightgbm``): the request's single tensor goes to the
  library's own ``predict``, past pyfunc's per-call schema enforcement and data frame
  conversions. It is used only if it answers as pyfunc does (same outputs, datatypes,
  shapes and values) on probes of the signature's shape at load; any other request,
  and every model whose native answers differ, goes through pyfunc.
  ``MODELYARD_DIRECT_PREDICT=off`` leaves every model to pyfunc.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from typing import Any

import numpy as np
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor, RequestInput
from mlserver.utils import get_model_uri
from mlserver_mlflow import MLflowRuntime as PyfuncRuntime
from mlserver_mlflow.codecs import TensorDictCodec

from modelyard.declarations.signature import declared_signature, keep_signature
from modelyard.serving.direct import DIRECT_ENV
from modelyard.serving.registry_uris import RegistryUriError, moves, resolve
from modelyard.serving.tensors import NUMPY_DTYPES
from modelyard_runtimes.errors import ModelError

logger = logging.getLogger("modelyard.runtimes")

# MLmodel flavour -> the module whose load_model gives the library's own model.
NATIVE_FLAVOURS = {
    "sklearn": "mlflow.sklearn",
    "xgboost": "mlflow.xgboost",
    "lightgbm": "mlflow.lightgbm",
}
NUMERIC = {"FP32", "FP64", "INT32", "INT64"}


def pin_registry_uri(uri: str) -> str:
    """A ``models:/`` URI naming a stage, ``latest`` or an alias as the version it names
    now (``models:/churn/3``); any other URI as it is. The server's registry pins a
    folder's URI before the model loads (`modelyard.serving.registry_uris`): this is for
    settings loaded without it (a batch run)."""
    if not moves(uri):
        return uri
    try:
        return resolve(uri).pinned
    except RegistryUriError as e:
        raise ModelError(str(e)) from None


class MLflowRuntime(PyfuncRuntime):
    _native: Any = None
    _native_input: MetadataTensor | None = None

    async def load(self) -> bool:
        inputs, outputs = declared_signature(self._settings)
        params = self._settings.parameters
        if params is not None and params.uri:
            # Pinned for the life of this version: a stage or alias that moves is seen
            # by the next load, never half-way through this one.
            pinned = await asyncio.to_thread(pin_registry_uri, params.uri)
            if pinned != params.uri:
                logger.info("model '%s': %s is %s", self.name, params.uri, pinned)
                params.uri = pinned
        await super().load()
        if not inputs and not outputs and (self.inputs or self.outputs):
            keep_signature(self, (list(self.inputs or ()), list(self.outputs or ())))
        if os.environ.get(DIRECT_ENV) != "off":
            uri = await get_model_uri(self._settings)
            try:
                await asyncio.to_thread(self._load_native, uri)
            except Exception as e:  # a flavour this MLflow reads differently
                logger.info("model '%s': predicting through pyfunc (%s)", self.name, e)
                self._native = None
        return True

    def _load_native(self, uri: str) -> None:
        flavours = self._model.metadata.flavors
        flavour = next((f for f in NATIVE_FLAVOURS if f in flavours), None)
        spec = self._single_tensor()
        if flavour is None or spec is None:
            return
        native = importlib.import_module(NATIVE_FLAVOURS[flavour]).load_model(uri)
        if not callable(getattr(native, "predict", None)):
            return
        self._native, self._native_input = native, spec
        if not asyncio.run(self._agrees()):
            logger.info("model '%s': predicting through pyfunc (native answers differ)",
                        self.name)  # fmt: skip
            self._native = None
            return
        logger.info("model '%s': predicting with its %s flavour", self.name, flavour)

    def _single_tensor(self) -> MetadataTensor | None:
        """The signature's input when it is one numeric matrix of fixed width."""
        if self._signature is None or len(self.inputs or ()) != 1:
            return None
        (spec,) = self.inputs
        if spec.datatype not in NUMERIC or len(spec.shape) != 2 or spec.shape[1] < 1:
            return None
        if not self._signature.inputs.is_tensor_spec():
            return None
        return spec

    async def _agrees(self) -> bool:
        spec = self._native_input
        assert spec is not None
        width = spec.shape[1]
        for rows in (1, 5):
            probe = np.linspace(-3.0, 3.0, rows * width).reshape(rows, width)
            data = probe.astype(NUMPY_DTYPES[spec.datatype])
            request = InferenceRequest(inputs=[NumpyCodec.encode_input(spec.name, data)])
            request.inputs[0].datatype = spec.datatype
            ours = self._named(self._native_predict(request.inputs[0]))
            theirs = self._named(await super().predict(request))
            if ours.model_dump() != theirs.model_dump():
                return False
        return True

    def _native_predict(self, request_input: RequestInput) -> InferenceResponse:
        x = NumpyCodec.decode_input(request_input)
        return self.encode_response(self._native.predict(x), default_codec=TensorDictCodec)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        spec = self._native_input
        if (
            self._native is not None
            and spec is not None
            and len(payload.inputs) == 1
            and payload.inputs[0].name == spec.name
            and payload.inputs[0].datatype == spec.datatype
            and not payload.outputs
            # Parameters reach a model only through a params schema; pyfunc ignores them
            # (a client's binary_data_output) where it has none.
            and (self._signature.params is None or not self._parameters(payload))
        ):
            return self._named(self._native_predict(payload.inputs[0]))
        return self._named(await super().predict(payload))

    @staticmethod
    def _parameters(payload: InferenceRequest) -> dict[str, Any]:
        return dict(payload.parameters.model_extra or {}) if payload.parameters else {}

    def _named(self, response: InferenceResponse) -> InferenceResponse:
        # MLServer's runtime names a single unnamed output 'output-1' in its answers and
        # 'output-0' in the metadata it makes of the signature, and answers a signature's
        # [-1] as [n, 1]: the answer is given the signature's name and rank.
        outputs = list(self.outputs or [])
        if len(outputs) == 1 and len(response.outputs) == 1:
            spec, output = outputs[0], response.outputs[0]
            output.name = spec.name
            if len(spec.shape) == len(output.shape) - 1 and output.shape[-1] == 1:
                output.shape = list(output.shape[:-1])
        return response
