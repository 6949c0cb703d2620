"""ModelInfer from protobuf to NumPy and back, for models predicted directly.

For a call MLServer's scikit-learn and XGBoost runtimes answer with their default
output, MLServer builds pydantic request and response objects, decodes the input
through its codecs into the array it could have read from the raw bytes, encodes the
prediction into a list and packs the list back into bytes: for a directly predicted
model (`modelyard.serving.direct`), several times the prediction's own time. A lane reads the
input from the raw bytes, calls the same ``predict`` the runtime would and writes the
same response: the data plane still counts it, checks it against the signature and
runs MLServer's response middleware on it (`_DataPlane.infer_lane`).

A model gets a lane only when nothing in its settings changes how the runtime decodes
or encodes (content types, ``predict_fn``) or batches its calls (adaptive batching); a
call takes it only when it is one raw numeric input with no parameters and no requested
outputs. Everything else, and every model when ``MODELYARD_DIRECT_PREDICT=off``, goes
MLServer's way.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import numpy as np
from mlserver.codecs.numpy import NumpyCodec
from mlserver.codecs.utils import inject_batch_dimension
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import ModelInferResponseConverter
from mlserver.middleware import InferenceMiddleware
from mlserver.model import MLModel
from mlserver.types import InferenceResponse, MetadataTensor
from mlserver.utils import extract_headers

from modelyard.declarations.signature import check_inputs, check_outputs, declared
from modelyard.mlserver_internals import runtime_model
from modelyard.serving.direct import ARRAYS_METHOD, runtime_classes
from modelyard.serving.tensors import RAW_DTYPES, check_shape, datatype_of

logger = logging.getLogger(__name__)

LANE_ATTR = "_modelyard_lane"
OUTPUT = "predict"  # both runtimes' default output
_PLAIN = (None, NumpyCodec.ContentType)  # content types that decode and encode as NumPy
_NUMPY = {"content_type": pb.InferParameter(string_param=NumpyCodec.ContentType)}
_EMPTY = pb.InferTensorContents()


def _content_type(tensor: MetadataTensor) -> str | None:
    return tensor.parameters.content_type if tensor.parameters is not None else None


def give_lane(model: MLModel) -> bool:
    """Give a model predicted directly its lane, where its settings leave the
    runtime's decoding and encoding at NumPy's; True when it has one."""
    if callable(getattr(model, ARRAYS_METHOD, None)):
        return _give_arrays_lane(model)
    if type(model) not in runtime_classes():
        return False  # a subclass may decode, predict or encode its own way
    settings = model.settings
    if settings.max_batch_size > 1 and settings.max_batch_time > 0:
        return False  # adaptive batching, asked for, batches calls into one predict
    parameters = settings.parameters
    if parameters is not None:
        if parameters.extra and "predict_fn" in parameters.extra:
            return False  # the scikit-learn runtime's default output is another method
        if parameters.content_type not in _PLAIN:
            return False  # the request's codec
    tensors = [*(settings.inputs or ()), *(settings.outputs or ())]
    if any(_content_type(t) not in _PLAIN for t in tensors):
        return False
    setattr(model, LANE_ATTR, Lane(model))
    logger.info("model '%s': gRPC calls of one raw input answered from NumPy", model.name)
    return True


def _give_arrays_lane(model: MLModel) -> bool:
    """A runtime answering arrays itself (`ARRAYS_METHOD`): its lane, unless adaptive
    batching gathers its calls."""
    settings = model.settings
    if settings.max_batch_size > 1 and settings.max_batch_time > 0:
        return False
    setattr(model, LANE_ATTR, ArraysLane(model))
    logger.info("model '%s': gRPC calls of one raw input answered from NumPy", model.name)
    return True


def takes(request: pb.ModelInferRequest) -> bool:
    """A call the runtime would answer from one raw numeric input, with its default
    output, and nothing in the request to change how it decodes."""
    if len(request.inputs) != 1 or len(request.raw_input_contents) != 1:
        return False
    if request.outputs or request.parameters:
        return False
    tensor = request.inputs[0]
    if tensor.parameters or tensor.HasField("contents"):
        return False
    dtype = RAW_DTYPES.get(tensor.datatype)
    if dtype is None or not tensor.shape:
        return False
    # A size that does not fit the shape gets MLServer's own error.
    return len(request.raw_input_contents[0]) == math.prod(tensor.shape) * dtype.itemsize


class _Output(NamedTuple):
    name: str
    datatype: str
    shape: list[int]


class Lane:
    """One model's calls that `takes` accepts, answered as its runtime would."""

    def __init__(self, model: MLModel):
        self.model = model
        self.inputs, self.outputs = declared(model)  # what the data plane checks
        self.predict = runtime_model(model).predict
        self._no_id_headers: dict[str, str] | None = None

    def _raw_input(
        self, request: pb.ModelInferRequest
    ) -> tuple[pb.ModelInferRequest.InferInputTensor, np.ndarray]:
        """The call's one input, checked against the declaration, as an array over its
        raw bytes in its shape."""
        if self.inputs:
            check_inputs(self.model.name, self.inputs, request.inputs)
        tensor = request.inputs[0]
        check_shape(tensor.name, tensor.shape)
        x = np.frombuffer(request.raw_input_contents[0], RAW_DTYPES[tensor.datatype])
        return tensor, x.reshape(tuple(tensor.shape))

    def answer(
        self, request: pb.ModelInferRequest, middleware: InferenceMiddleware
    ) -> tuple[pb.ModelInferResponse, dict[str, str] | None]:
        """The response and its headers (trailing metadata) for a call it `takes`."""
        model = self.model
        _, x = self._raw_input(request)
        y = self.predict(x)
        datatype = datatype_of(y.dtype)
        raw_dtype = RAW_DTYPES.get(datatype) if datatype is not None else None
        if datatype is None or raw_dtype is None or (y.dtype.kind == "f" and np.isnan(y).any()):
            return self._encoded(request, y, middleware)  # strings, or NaN
        shape = inject_batch_dimension(list(y.shape))
        if self.outputs:
            check_outputs(model.name, self.outputs, [_Output(OUTPUT, datatype, shape)], every=False)
        response = pb.ModelInferResponse(
            model_name=model.name,
            id=request.id,
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(
                    name=OUTPUT,
                    datatype=datatype,
                    shape=shape,
                    parameters=_NUMPY,
                    contents=_EMPTY,  # set, as MLServer sets it, though empty
                )
            ],
            raw_output_contents=[np.ascontiguousarray(y, raw_dtype).tobytes()],
        )
        if model.version is not None:
            response.model_version = model.version
        return response, self._headers(request.id, middleware)

    @staticmethod
    def tensors(request: pb.ModelInferRequest) -> list[tuple[str, np.ndarray]]:
        """The input of a call it `takes`, as the model is given it."""
        tensor = request.inputs[0]
        return [(tensor.name, np.frombuffer(request.raw_input_contents[0],
                                            RAW_DTYPES[tensor.datatype]))]  # fmt: skip

    def _headers(self, id: str, middleware: InferenceMiddleware) -> dict[str, str] | None:
        """What MLServer's response middleware adds to a response with this id."""
        if not id and self._no_id_headers is not None:
            return self._no_id_headers
        response = InferenceResponse.model_construct(
            model_name=self.model.name, model_version=self.model.version, id=id, outputs=[]
        )
        middleware.response_middleware(response, self.model.settings)
        headers = extract_headers(response)
        if not id:
            self._no_id_headers = headers  # the same for every call without an id
        return headers

    def _encoded(
        self, request: pb.ModelInferRequest, y: np.ndarray, middleware: InferenceMiddleware
    ) -> tuple[pb.ModelInferResponse, dict[str, str] | None]:
        """The answer through MLServer's codec and converter, for what they do not
        encode as raw numbers (they fail on NaN, as a client would see there)."""
        model = self.model
        response = InferenceResponse(
            model_name=model.name,
            model_version=model.version,
            id=request.id,
            outputs=[NumpyCodec.encode_output(OUTPUT, y)],
        )
        middleware.response_middleware(response, model.settings)
        if self.outputs:
            check_outputs(model.name, self.outputs, response.outputs, every=False)
        headers = extract_headers(response)
        return ModelInferResponseConverter.from_types(response, use_raw=True), headers


class ArraysLane(Lane):
    """The lane of a runtime with `ARRAYS_METHOD`: every output it answers, raw."""

    def __init__(self, model: MLModel):
        self.model = model
        self.inputs, self.outputs = declared(model)
        self.arrays = getattr(model, ARRAYS_METHOD)
        self._no_id_headers = None

    def answer(
        self, request: pb.ModelInferRequest, middleware: InferenceMiddleware
    ) -> tuple[pb.ModelInferResponse, dict[str, str] | None]:
        model = self.model
        tensor, x = self._raw_input(request)
        answered = self.arrays(tensor.name, tensor.datatype, x)
        outputs, raw = [], []
        for name, y in answered:
            datatype = datatype_of(y.dtype)
            raw_dtype = RAW_DTYPES.get(datatype) if datatype is not None else None
            if datatype is None or raw_dtype is None:
                raise TypeError(f"output {name!r} is {y.dtype}, which the lane does not write")
            outputs.append(_Output(name, datatype, list(y.shape)))
            raw.append(np.ascontiguousarray(y, raw_dtype).tobytes())
        if self.outputs:
            check_outputs(model.name, self.outputs, outputs, every=False)
        response = pb.ModelInferResponse(
            model_name=model.name,
            id=request.id,
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(
                    name=o.name,
                    datatype=o.datatype,
                    shape=o.shape,
                    parameters=_NUMPY,
                    contents=_EMPTY,
                )
                for o in outputs
            ],
            raw_output_contents=raw,
        )
        if model.version is not None:
            response.model_version = model.version
        return response, self._headers(request.id, middleware)
