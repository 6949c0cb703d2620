"""The predictor runtime: a user's prediction class behind V2."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pandas as pd
from mlserver.codecs import NumpyCodec, PandasCodec, StringCodec
from mlserver.codecs.errors import CodecError
from mlserver.errors import InferenceError
from mlserver.model import MLModel
from mlserver.types import InferenceRequest, InferenceResponse

from modelyard.imports import handed_over
from modelyard_runtimes.predictor.pipeline import PredictorOptions, PredictorPipeline
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
    Requests by id that arrive while the class is busy are scored together in its next
    call (`CoalescingScorer`).
    """

    # What `modelyard batch run` scores with: the options and pipeline served online.
    batch_options = PredictorOptions.from_settings
    batch_pipeline = PredictorPipeline.from_settings

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
        self._scorer = CoalescingScorer(self._pipeline.score, self._in_model_thread)
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
            scores = await self._scorer.score(found)
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
        # While the model loads and warms up, its imports take turns with other
        # threads' (`modelyard.imports`).
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, handed_over(fn), *args
        )


class CoalescingScorer:
    """Scores the features of the requests that queued while the model was busy in one
    call, without waiting for more: a lone request is scored at once, and under load
    each call takes what arrived during the one before (up to ``max_rows`` rows).

    A pipeline's scoring is row by row (batch runs score it in chunks), so the rows
    are split back by position. If a call of several requests fails, each is scored
    again on its own, so that only the request whose rows fail gets the error.
    """

    def __init__(
        self,
        score: Callable[[pd.DataFrame], pd.DataFrame],
        run: Callable[..., Awaitable[pd.DataFrame]],
        max_rows: int = 20_000,
    ):
        self._score = score
        self._run = run
        self._max_rows = max_rows
        self._pending: list[tuple[pd.DataFrame, asyncio.Future[pd.DataFrame]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def score(self, features: pd.DataFrame) -> pd.DataFrame:
        if features.empty:  # no known id: nothing for the model to do
            return self._score(features)
        future: asyncio.Future[pd.DataFrame] = asyncio.get_running_loop().create_future()
        self._pending.append((features, future))
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _next_batch(self) -> list[tuple[pd.DataFrame, asyncio.Future[pd.DataFrame]]]:
        rows, taken = 0, 0
        for features, _ in self._pending:
            if taken and rows + len(features) > self._max_rows:
                break
            rows += len(features)
            taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._next_batch()
                if len(batch) == 1:
                    await self._answer(*batch[0])
                    continue
                merged = pd.concat([features for features, _ in batch], ignore_index=True)
                try:
                    scores = await self._run(self._score, merged)
                except Exception:
                    for features, future in batch:
                        await self._answer(features, future)
                    continue
                start = 0
                for features, future in batch:
                    part = scores.iloc[start : start + len(features)].reset_index(drop=True)
                    start += len(features)
                    if not future.done():
                        future.set_result(part)
        finally:
            self._drainer = None

    async def _answer(self, features: pd.DataFrame, future: asyncio.Future[pd.DataFrame]) -> None:
        try:
            result = await self._run(self._score, features)
        except Exception as e:
            if not future.done():
                future.set_exception(e)
            return
        if not future.done():
            future.set_result(result)
