"""The predictor runtime: a user's prediction class behind V2."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mlserver.codecs import NumpyCodec, PandasCodec, StringCodec
from mlserver.codecs.errors import CodecError
from mlserver.errors import InferenceError
from mlserver.model import MLModel
from mlserver.types import InferenceRequest, InferenceResponse

from modelyard_runtimes.predictor.pipeline import PredictorPipeline
from modelyard_runtimes.tensors import decode_ids, encode_outputs, named_results

T = TypeVar("T")


class PredictorRuntime(MLModel):
    """Serves a class written by a data scientist, named by ``parameters.extra.predictor``
    (``predictor.py:GenderPredictor`` in the model folder, or ``package.module:Class``)::

        class GenderPredictor:
            def load(self, artifacts_dir: str) -> None: ...   # the model folder
            def preprocess(self, inputs): ...                  # optional
            def predict(self, instances): ...
            def postprocess(self, predictions): ...            # optional

    Inputs: one V2 input is a numpy array (a list of str for BYTES); several inputs,
    or the request content type ``pd``, a pandas DataFrame with a column per input.
    With declared ``features``, the request carries only entity ids (input named after
    the key) and the model gets their features from ``features.sql`` instead.

    Outputs: a dict of name -> array, a DataFrame (a column per output) or one array
    (named after the first declared output, else ``predict``), in the declared datatypes.

    The class's code runs on one thread of its own, never concurrently with itself and
    never on the event loop; feature queries run on the event loop's default thread pool.
    """

    async def load(self) -> bool:
        self._pipeline = PredictorPipeline.from_settings(self.settings)
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"predictor-{self.name}"
        )
        try:
            await self._in_model_thread(self._pipeline.load)
        except BaseException:
            await self.unload()
            raise
        return True

    async def unload(self) -> bool:
        pipeline = getattr(self, "_pipeline", None)
        if pipeline is not None:
            await asyncio.to_thread(pipeline.close)
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        pipeline = self._pipeline
        if pipeline.key is not None:
            ids = decode_ids(self.name, pipeline.key, payload)
            found = await asyncio.to_thread(pipeline.fetch, ids)
            scores = await self._in_model_thread(pipeline.score, found)
            aligned = pipeline.align(ids, scores)
            results = {str(c): aligned[c] for c in aligned.columns}
        else:
            result = await self._in_model_thread(pipeline.run, self._decode(payload))
            results = named_results(self.name, result, pipeline.default_output)
        outputs = encode_outputs(
            self.name, results, pipeline.outputs, pipeline.datatypes, payload.outputs
        )
        return InferenceResponse(model_name=self.name, model_version=self.version, outputs=outputs)

    def _decode(self, payload: InferenceRequest) -> Any:
        content_type = payload.parameters.content_type if payload.parameters else None
        try:
            if len(payload.inputs) == 1 and content_type is None:
                request_input = payload.inputs[0]
                default = StringCodec if request_input.datatype == "BYTES" else NumpyCodec
                return self.decode(request_input, default_codec=default)
            return self.decode_request(payload, default_codec=PandasCodec)
        except (CodecError, ValueError, TypeError) as e:
            raise InferenceError(f"model '{self.name}': cannot decode the request: {e}") from None

    async def _in_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
