"""``runtime: huggingface``: MLServer's Hugging Face runtime, with a batch of texts in
``args`` and the request's mistakes told as 400s.

MLServer's runtime passes each element of ``args`` as its own positional argument, so
two texts in ``args`` (shape ``[2]``, the V2 way to send several) reach the pipeline as
two arguments and fail with a ``TypeError``; a request without ``args``, or texts sent
as numbers, fail inside the pipeline too. Here the texts of ``args`` are one batch (one
answer per text, as ``array_inputs`` gives), the task's inputs are checked before the
pipeline runs, and the metadata names the output the runtime really returns (``output``,
``hg_jsonlist``; MLServer's table says ``outputs``, ``hg_json``).
"""

from __future__ import annotations

from typing import Any

from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, MetadataTensor, Parameters
from mlserver_huggingface import HuggingFaceRuntime as MLServerHuggingFaceRuntime
from mlserver_huggingface.codecs import HuggingfaceRequestCodec
from mlserver_huggingface.metadata import METADATA

# Where the pipeline's input goes; any other input is one of its keyword parameters.
POSITIONAL = ("args", "array_inputs")
# What `HuggingfaceRequestCodec.encode_response` answers, whatever the task.
OUTPUT = MetadataTensor(
    name="output",
    datatype="BYTES",
    shape=[-1, 1],
    parameters=Parameters(content_type="hg_jsonlist"),
)


class HuggingFaceRuntime(MLServerHuggingFaceRuntime):
    """A Hugging Face pipeline (``model.parameters``: task, framework...), answered as
    MLServer's runtime answers it, a batch of texts in ``args`` included."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        self._check(payload)
        kwargs = HuggingfaceRequestCodec.decode_request(payload)
        args = kwargs.pop("args", [])
        array_inputs = kwargs.pop("array_inputs", [])
        if array_inputs:
            args = [list(array_inputs), *args]
        elif len(args) > 1 and all(isinstance(a, str) for a in args):
            args = [list(args)]  # several texts: one batch, one answer per text
        try:
            prediction = self._model(*args, **kwargs)
        except TypeError as e:
            if not kwargs:
                raise
            # The pipeline's call refuses a keyword it does not take.
            raise InferenceError(
                f"model '{self.name}': input {', '.join(repr(k) for k in kwargs)} is not a "
                f"parameter of the {self.hf_settings.task} pipeline; send its input in 'args'"
            ) from e
        return self.encode_response(payload=prediction, default_codec=HuggingfaceRequestCodec)

    def _check(self, payload: InferenceRequest) -> None:
        """The request's inputs against the task's: its positional input there, with
        the datatype and rank the task takes."""
        names = [t.name for t in payload.inputs]
        if not any(n in POSITIONAL for n in names):
            raise InferenceError(
                f"model '{self.name}': no input 'args' (or 'array_inputs'); the "
                f"{self.hf_settings.task} pipeline takes its input there "
                f"(got {', '.join(repr(n) for n in names)})"
            )
        expected = _task_inputs(self.hf_settings.task).get("args")
        if expected is None:
            return
        for tensor in payload.inputs:
            if tensor.name not in POSITIONAL:
                continue
            if tensor.datatype != expected.datatype or len(tensor.shape) != len(expected.shape):
                raise InferenceError(
                    f"model '{self.name}': input '{tensor.name}' is {tensor.datatype} of shape "
                    f"{list(tensor.shape)}; the {self.hf_settings.task} pipeline takes "
                    f"{expected.datatype} of shape {list(expected.shape)} (-1 is any size)"
                )

    def _merge_metadata(self) -> None:
        # Declared inputs and outputs stand; the task's fill in only what is not declared.
        settings = self.settings
        if not settings.inputs:
            settings.inputs = list(_task_inputs(self.hf_settings.task).values())
        if not settings.outputs:
            settings.outputs = [OUTPUT]


def _task_inputs(task: str) -> dict[str, MetadataTensor]:
    meta: dict[str, Any] = METADATA.get(task) or {}
    return {t.name: t for t in meta.get("inputs", [])}
