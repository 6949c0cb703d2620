"""``runtime: onnx``: an ONNX graph (exported from scikit-learn with skl2onnx, from
XGBoost or LightGBM with onnxmltools, from PyTorch...) answered by onnxruntime.

The graph says its inputs and outputs (names, element types, shapes); at load the
declared signature is held to them, so a declaration that names an input the graph
does not have, or the wrong datatype or rank, is refused there rather than on the
first request. Without a declared signature the graph's becomes the model's V2
signature (``/v2/models/<name>`` shows it and requests are checked against it).

onnxruntime is the direct path here: the request's arrays go to the session's C++
run with no per-call layers of a training library in between. A graph of one numeric
input and numeric outputs also gets the gRPC lane (`modelyard.serving.lanes`): a call of
one raw input is read from its bytes, run and written back as raw outputs, with no V2
request or response objects, once ``predict_arrays`` answered as ``predict`` does on
probes at load (``MODELYARD_DIRECT_PREDICT=off`` leaves every call to ``predict``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from mlserver import types
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.errors import InferenceError
from mlserver.model import MLModel
from mlserver.utils import get_model_uri

from modelyard.declarations.signature import declared_signature, keep_signature
from modelyard.serving.direct import DIRECT_ENV
from modelyard.serving.tensors import datatype_of
from modelyard_runtimes.errors import ModelError

logger = logging.getLogger("modelyard.runtimes")

WELLKNOWN_MODEL_FILENAMES = ["model.onnx"]
Arrays = list[tuple[str, np.ndarray]]

# ONNX tensor element types -> V2 datatypes.
ONNX_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
NUMPY_OF = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "BOOL": np.bool_,
}


def graph_tensor(arg: Any) -> types.MetadataTensor | None:
    """An onnxruntime NodeArg as V2 metadata; None for what V2 cannot carry (a sequence
    of maps, e.g. skl2onnx's ZipMap probabilities)."""
    datatype = ONNX_DATATYPES.get(arg.type)
    if datatype is None:
        return None
    shape = [d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or [])]
    return types.MetadataTensor(name=arg.name, datatype=datatype, shape=shape)


def signature_problems(
    model: str, declared: Sequence[types.MetadataTensor], graph: Sequence[Any], key: str
) -> list[str]:
    """How the declared ``key`` (inputs or outputs) differs from the graph's."""
    by_name = {a.name: a for a in graph}
    problems = []
    for tensor in declared:
        arg = by_name.get(tensor.name)
        if arg is None:
            names = ", ".join(repr(a.name) for a in graph)
            problems.append(f"{key} {tensor.name!r} is not in the graph, whose {key} are {names}")
            continue
        found = graph_tensor(arg)
        if found is None:
            problems.append(
                f"{key} {tensor.name!r} is a {arg.type} in the graph, which V2 cannot carry; "
                "export the model with tensor outputs (skl2onnx: options={'zipmap': False})"
            )
            continue
        if found.datatype != tensor.datatype:
            problems.append(
                f"{key} {tensor.name!r} is {found.datatype} in the graph ({arg.type}), "
                f"declared {tensor.datatype}"
            )
        dims = list(tensor.shape)
        fixed = [(d, g) for d, g in zip(dims, found.shape, strict=False) if d >= 0 and g >= 0]
        if len(dims) != len(found.shape) or any(d != g for d, g in fixed):
            problems.append(
                f"{key} {tensor.name!r} has shape {found.shape} in the graph (-1: any), "
                f"declared {dims}"
            )
    if key == "inputs" and declared:
        missing = [a.name for a in graph if a.name not in {t.name for t in declared}]
        if missing:
            problems.append(
                f"inputs {', '.join(map(repr, missing))} of the graph are not declared; "
                "declare every input the graph takes"
            )
    return problems


class OnnxRuntime(MLModel):
    """Loads ``model.uri`` (a .onnx file) into an onnxruntime session."""

    # The gRPC lane's call (`modelyard.serving.direct.ARRAYS_METHOD`), set at load once
    # it answered probes as `predict` does.
    predict_arrays: Callable[[str, str, np.ndarray], Arrays] | None = None

    async def load(self) -> bool:
        import onnxruntime as ort

        path = await get_model_uri(self._settings, wellknown_filenames=WELLKNOWN_MODEL_FILENAMES)
        options = ort.SessionOptions()
        # One thread per call: the server answers several requests at once, and the
        # pool onnxruntime starts otherwise spins on every core between calls.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = await asyncio.to_thread(
            ort.InferenceSession, path, options, providers=["CPUExecutionProvider"]
        )
        graph_inputs = self._session.get_inputs()
        graph_outputs = self._session.get_outputs()
        # As declared: the settings are read before anything below adds the graph's.
        inputs, outputs = declared_signature(self._settings)
        problems = signature_problems(self.name, inputs, graph_inputs, "inputs")
        problems += signature_problems(self.name, outputs, graph_outputs, "outputs")
        if problems:
            raise ModelError(
                f"model '{self.name}': the declared signature does not fit {path}: "
                + "; ".join(problems)
            )
        graph_in = [t for t in map(graph_tensor, graph_inputs) if t is not None]
        if len(graph_in) != len(graph_inputs):
            raise ModelError(
                f"model '{self.name}': {path} takes an input that is not a tensor; "
                "only tensor inputs can be sent over V2"
            )
        # The outputs answered: those V2 carries (ZipMap's sequence of maps is left out).
        graph_out = [t for t in map(graph_tensor, graph_outputs) if t is not None]
        self._types = {t.name: t.datatype for t in graph_in}
        self._answered = [t.name for t in graph_out]
        if not inputs and not outputs:
            # The graph's signature is the model's: shown in its metadata and checked.
            self._settings.inputs = graph_in
            self._settings.outputs = graph_out
            self.inputs = graph_in
            self.outputs = graph_out
            keep_signature(self, (graph_in, graph_out))
        if os.environ.get(DIRECT_ENV) != "off":
            self.predict_arrays = await self._checked_arrays(graph_in, graph_out)
        return True

    def _arrays(self, name: str, datatype: str, x: np.ndarray) -> Arrays:
        """Every output the graph answers for one input's array."""
        feed = {name: self._input_array(name, datatype, x)}
        missing = [n for n in self._types if n not in feed]
        if missing:
            raise InferenceError(
                f"model '{self.name}': missing input {', '.join(map(repr, missing))}"
            )
        return list(zip(self._answered, self._run(self._answered, feed), strict=True))

    async def _checked_arrays(
        self, graph_in: list[types.MetadataTensor], graph_out: list[types.MetadataTensor]
    ) -> Callable[[str, str, np.ndarray], Arrays] | None:
        """`_arrays`, when the graph has one numeric input of fixed width and numeric
        outputs, and it answers probes of that input as `predict` does."""
        if len(graph_in) != 1 or any(t.datatype not in NUMPY_OF for t in graph_out):
            return None
        (spec,) = graph_in
        if spec.datatype not in NUMPY_OF or any(d < 0 for d in spec.shape[1:]):
            return None
        for rows in (1, 5) if spec.shape and spec.shape[0] < 0 else (0,):
            shape: list[int] = [rows if d < 0 else d for d in spec.shape]
            probe = np.linspace(-3.0, 3.0, math.prod(shape)).reshape(shape)
            x: np.ndarray = probe.astype(NUMPY_OF[spec.datatype])
            request = types.InferenceRequest(inputs=[NumpyCodec.encode_input(spec.name, x)])
            request.inputs[0].datatype = spec.datatype
            try:
                theirs = (await self.predict(request)).outputs
                ours = self._arrays(spec.name, spec.datatype, x)
            except Exception as e:  # a graph that refuses the probe: every call to predict
                logger.info("model '%s': no gRPC lane (%s)", self.name, e)
                return None
            same = len(ours) == len(theirs) and all(
                name == t.name
                and datatype_of(y.dtype) == t.datatype
                and list(y.shape) == list(t.shape)
                and np.array_equal(y, NumpyCodec.decode_output(t).reshape(y.shape), equal_nan=True)
                for (name, y), t in zip(ours, theirs, strict=False)
            )
            if not same:
                logger.info("model '%s': no gRPC lane (its answers differ)", self.name)
                return None
        return self._arrays

    def _input_array(self, name: str, datatype: str | None, array: Any) -> np.ndarray:
        """A numeric input as the graph takes it; a 400 naming the input otherwise."""
        expected = self._types.get(name)
        if expected is None:
            raise InferenceError(
                f"model '{self.name}' has no input '{name}'; its inputs are "
                + ", ".join(repr(n) for n in self._types)
            )
        if datatype != expected:
            raise InferenceError(
                f"model '{self.name}': input '{name}' is {expected}, "
                f"sent {datatype}; send it as {expected}"
            )
        return np.asarray(array, dtype=NUMPY_OF[expected])

    def _run(self, wanted: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
        try:
            return self._session.run(wanted, feed)
        except Exception as e:  # onnxruntime's errors name the node and the shapes
            raise InferenceError(f"model '{self.name}': {type(e).__name__}: {e}") from None

    def _feed(self, payload: types.InferenceRequest) -> dict[str, np.ndarray]:
        feed: dict[str, np.ndarray] = {}
        for request_input in payload.inputs:
            name, datatype = request_input.name, request_input.datatype
            if datatype == "BYTES" and self._types.get(name) == "BYTES":
                strings = StringCodec.decode_input(request_input)
                feed[name] = np.array(strings, dtype=object).reshape(request_input.shape)
            else:
                array = NumpyCodec.decode_input(request_input) if datatype != "BYTES" else None
                feed[name] = self._input_array(name, datatype, array)
        missing = [n for n in self._types if n not in feed]
        if missing:
            raise InferenceError(
                f"model '{self.name}': missing input {', '.join(map(repr, missing))}"
            )
        return feed

    async def predict(self, payload: types.InferenceRequest) -> types.InferenceResponse:
        feed = self._feed(payload)
        wanted = [o.name for o in payload.outputs or ()] or self._answered
        unknown = [n for n in wanted if n not in self._answered]
        if unknown:
            raise InferenceError(
                f"model '{self.name}' has no output {', '.join(map(repr, unknown))}; "
                f"its outputs are {', '.join(map(repr, self._answered))}"
            )
        results = self._run(wanted, feed)
        outputs = []
        for name, value in zip(wanted, results, strict=True):
            array = np.asarray(value)
            if array.dtype == object:
                output = StringCodec.encode_output(name, array.ravel().tolist())
            else:
                output = NumpyCodec.encode_output(name, array)
            output.shape = list(array.shape)  # the graph's, not with a batch axis added
            outputs.append(output)
        return types.InferenceResponse(
            model_name=self.name, model_version=self.version, outputs=outputs
        )
