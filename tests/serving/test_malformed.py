"""Malformed requests to every example model, over REST and gRPC: each is refused with a
4xx (INVALID_ARGUMENT, NOT_FOUND...) that names what is wrong (the input, the parameter,
the header), never a 5xx, INTERNAL or UNKNOWN, never with a library's exception text or a
path of the server; and a good request is answered right after each.

The models are those of model-settings/ (iris, scikit-learn; breast-cancer, XGBoost;
sentiment, Hugging Face, no declared signature) and the customer-profile example with
its lookup model (a predictor by user id; the stored predictions by user id).
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf.json_format import MessageToDict
from sklearn.datasets import load_breast_cancer
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tests.batch.conftest import EXAMPLE, FILES, batch, ok
from tests.conftest import print_log_on_failure
from tests.support.clients import expect_error, ids, infer, make_client, texts
from tests.support.server import REPO, ServerProcess

IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
CANCER_ROW = [float(v) for v in load_breast_cancer().data[0].astype(np.float32)]
BINARY_HEADER = "Inference-Header-Content-Length"
# What an error body must never show: a library's exception, a path of the server.
LEAKS = ("Traceback", "site-packages", str(REPO), "/tmp/", "struct.error", "ValueError",
         "TypeError", "KeyError", "IndexError", "AttributeError", "could not convert",
         "__call__", "pydantic", "is not a valid Datatype")  # fmt: skip


# -- the server: every example model, the lookup reading a real batch run ----------------


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("malformed")
    models = root / "models"
    for name in ("iris", "breast-cancer", "sentiment"):
        shutil.copytree(REPO / "model-settings" / name, models / name)
    profile = models / "customer-profile"
    profile.mkdir()
    for name in FILES:
        shutil.copy2(EXAMPLE / name, profile / name)
    store = f"sqlite:///{root}/predictions.db"
    ok(batch(profile, store, "--run-id", "corpus"))
    server = ServerProcess(
        models, root / "serve.log", extra_args=["--no-watch"], env={"PREDICTIONS_DB_URL": store}
    )
    server.start()
    try:
        # Five models, one of them a transformer, in each process of a shared machine.
        server.wait_ready(timeout=300)
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(request: pytest.FixtureRequest, examples: ServerProcess) -> Iterator[ServerProcess]:
    yield examples
    print_log_on_failure(request, examples)


# -- the models: a good request of each, and what its inputs are -------------------------


@dataclass(frozen=True)
class Example:
    model: str
    input: str
    datatype: str
    row: list[Any]  # one good row (numeric) or the good elements (BYTES)
    check: Callable[[dict], bool]  # a good answer (REST JSON body)

    @property
    def numeric(self) -> bool:
        return self.datatype != "BYTES"

    def shape(self, rows: int = 1) -> list[int]:
        return [rows, len(self.row)] if self.numeric else [len(self.row)]

    def tensor(self, **changes: Any) -> dict[str, Any]:
        tensor = {"name": self.input, "datatype": self.datatype, "shape": self.shape(),
                  "data": list(self.row)}  # fmt: skip
        tensor.update(changes)
        return tensor

    def body(self, **changes: Any) -> dict[str, Any]:
        return {"inputs": [self.tensor(**changes)]}


def _outputs(body: dict) -> dict[str, list]:
    return {o["name"]: o["data"] for o in body.get("outputs", [])}


IRIS = Example("iris", "input-0", "FP64", IRIS_ROW, lambda b: _outputs(b)["predict"] == [0])
CANCER = Example(
    "breast-cancer", "input-0", "FP32", CANCER_ROW, lambda b: _outputs(b)["predict"] == [0]
)
SENTIMENT = Example(
    "sentiment", "args", "BYTES", ["i love this great movie"],
    lambda b: json.loads(_outputs(b)["output"][0])["label"] == "POSITIVE",
)  # fmt: skip
GENDER = Example(
    "gender", "user_id", "BYTES", ["u0000042", "nobody"],
    lambda b: _outputs(b)["missing"] == [False, True],
)  # fmt: skip
LOOKUP = Example(
    "gender-lookup", "user_id", "BYTES", ["u0000042", "nobody"],
    lambda b: _outputs(b)["missing"] == [False, True],
)  # fmt: skip
EXAMPLES = (IRIS, CANCER, SENTIMENT, GENDER, LOOKUP)
NUMERIC = (IRIS, CANCER)
TEXTS = (SENTIMENT, GENDER, LOOKUP)


# -- REST --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rest:
    example: Example
    label: str
    body: bytes
    names: tuple[str, ...]  # what the error must name (any one of them)
    path: str = "infer"
    headers: dict[str, str] = field(default_factory=dict)
    model: str | None = None  # another model name in the path

    @property
    def id(self) -> str:
        return f"{self.example.model}-{self.label}"


def rest(example: Example, label: str, body: Any, *names: str, **kw: Any) -> Rest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Rest(example, label, raw, names or (f"'{example.input}'",), **kw)


def numeric_rest(e: Example) -> list[Rest]:
    n, row = e.input, e.row
    width = len(row)
    return [
        rest(e, "string", e.body(data=["abc", *row[1:]])),
        rest(e, "number-as-string", e.body(data=[str(row[0]), *row[1:]])),
        rest(e, "boolean", e.body(data=[True, *row[1:]])),
        rest(e, "null", e.body(data=[None, *row[1:]])),
        rest(e, "object", e.body(data=[{"v": 1}, *row[1:]])),
        rest(e, "all-null", e.body(data=[None] * width)),
        rest(e, "beyond-fp32", e.body(datatype="FP32", data=[1e39, *row[1:]])),
        rest(
            e,
            "beyond-fp64",
            b'{"inputs": [{"name": "%s", "datatype": "FP64", "shape": [1, %d],'
            b' "data": [1e999%s]}]}' % (n.encode(), width, b", 1.0" * (width - 1)),
            "body",
        ),
        rest(e, "zero-rows", e.body(shape=[0, width], data=[])),
        rest(e, "ragged", e.body(shape=[2, width], data=[row, row[:-1]])),
        rest(e, "nested-deeper", e.body(data=[[row]])),
        rest(e, "list-in-a-row", e.body(data=[[row[0], [row[1]], *row[2:]]])),
        rest(e, "too-few-values", e.body(data=row[:-1])),
        rest(e, "too-many-values", e.body(data=[*row, 1.0])),
        rest(e, "nested-count-mismatch", e.body(shape=[2, width], data=[row])),
        rest(e, "shape-not-declared", e.body(shape=[1, width + 1], data=[*row, 1.0])),
        rest(e, "one-dimension", e.body(shape=[width])),
        rest(e, "negative-shape", e.body(shape=[-1, width])),
        rest(e, "shape-of-strings", e.body(shape=["one", width]), "shape"),
        rest(
            e, "no-shape", {"inputs": [{"name": n, "datatype": e.datatype, "data": row}]}, "shape"
        ),
        rest(e, "wrong-datatype", e.body(datatype="INT64", data=[int(v) for v in row])),
        rest(e, "unknown-datatype", e.body(datatype="BOGUS")),
        rest(e, "lowercase-datatype", e.body(datatype=e.datatype.lower())),
        rest(e, "data-is-a-string", e.body(data="5.1,3.5")),
        rest(e, "data-is-an-object", e.body(data={"x": row})),
        rest(
            e,
            "no-data",
            {"inputs": [{"name": n, "datatype": e.datatype, "shape": e.shape()}]},
            "data",
        ),
        rest(e, "wrong-name", e.body(name="x"), "'x'"),
        rest(e, "two-inputs", {"inputs": [e.tensor(), e.tensor(name="extra")]}, "'extra'"),
        rest(e, "same-input-twice", {"inputs": [e.tensor(), e.tensor()]}),
        rest(e, "no-inputs", {"inputs": []}, "inputs"),
        rest(e, "content-type-as-number", e.body(parameters={"content_type": 5}), "content_type"),
        rest(
            e, "unknown-content-type", e.body(parameters={"content_type": "bogus"}), "content_type"
        ),
        rest(e, "unknown-output", {**e.body(), "outputs": [{"name": "nope"}]}, "nope"),
        rest(
            e,
            "binary-size-past-end",
            e.body(parameters={"binary_data_size": 64}),
            n,
            headers={BINARY_HEADER: "AUTO"},
        ),
        rest(
            e,
            "binary-wrong-length",
            e.body(parameters={"binary_data_size": 12}),
            n,
            headers={BINARY_HEADER: "AUTO", "x-binary": "12"},
        ),
        rest(e, "stream-malformed", e.body(data=["abc", *row[1:]]), path="infer_stream"),
    ]


def text_rest(e: Example) -> list[Rest]:
    texts = e.row
    return [
        rest(e, "numbers", e.body(data=[1] * len(texts))),
        rest(e, "null", e.body(data=[None] * len(texts))),
        rest(e, "objects", e.body(data=[{"text": t} for t in texts])),
        rest(e, "nested", e.body(data=[[t] for t in texts])),
        rest(e, "ragged", e.body(shape=[2, 1], data=[[texts[0]], []])),
        rest(e, "too-few", e.body(shape=[len(texts) + 1])),
        rest(e, "too-many", e.body(shape=[len(texts)], data=[*texts, texts[0]])),
        rest(e, "zero", e.body(shape=[0], data=[])),
        rest(e, "two-dimensions", e.body(shape=[len(texts), 1])),
        rest(e, "numeric-datatype", e.body(datatype="FP32", data=[1.0] * len(texts))),
        rest(e, "wrong-name", e.body(name="texts"), "'texts'"),
        rest(e, "no-inputs", {"inputs": []}, "inputs"),
        rest(e, "content-type-as-number", e.body(parameters={"content_type": 5}), "content_type"),
        rest(
            e,
            "request-content-type-as-list",
            {**e.body(), "parameters": {"content_type": [1]}},
            "content_type",
        ),
        rest(e, "inputs-not-a-list", {"inputs": e.tensor()}, "inputs"),
        rest(e, "stream-no-inputs", {"inputs": []}, "inputs", path="infer_stream"),
        rest(e, "generate-stream-empty", b"", "body", path="generate_stream"),
    ]


def any_rest(e: Example) -> list[Rest]:
    return [
        rest(e, "not-json", b"{inputs: [", "body"),
        rest(e, "empty-body", b"", "body"),
        rest(e, "json-array", [e.tensor()], "body"),
        rest(e, "id-as-number", {**e.body(), "id": 7}, "id"),
        rest(e, "unknown-model", e.body(), "no-such-model", model="no-such-model"),
        rest(
            e,
            "stream-unknown-model",
            e.body(),
            "no-such-model",
            model="no-such-model",
            path="infer_stream",
        ),
        rest(
            e,
            "generate-stream-unknown",
            e.body(),
            "no-such-model",
            model="no-such-model",
            path="generate_stream",
        ),
        rest(e, "bad-binary-header", e.body(), BINARY_HEADER, headers={BINARY_HEADER: "ten"}),
    ]


REST_CASES = [c for e in NUMERIC for c in numeric_rest(e)] + [
    c for e in TEXTS for c in text_rest(e)
] + [c for e in EXAMPLES for c in any_rest(e)]  # fmt: skip


def send(server: ServerProcess, case: Rest) -> requests.Response:
    headers = dict(case.headers)
    body = case.body
    if headers.get(BINARY_HEADER) == "AUTO":  # the JSON header, then raw bytes
        size = int(headers.pop("x-binary", "0"))
        headers[BINARY_HEADER] = str(len(body))
        body += b"\0" * size
    url = f"{server.base}/v2/models/{case.model or case.example.model}/{case.path}"
    return requests.post(url, data=body, headers=headers, timeout=60)


def good_rest(server: ServerProcess, example: Example) -> None:
    r = requests.post(
        f"{server.base}/v2/models/{example.model}/infer", json=example.body(), timeout=60
    )
    assert r.status_code == 200, f"a good request after it: {r.status_code} {r.text}"
    assert example.check(r.json()), r.text


def error_text(text: str) -> str:
    """The message of an error body (JSON, or the events of a stream)."""
    try:
        body = json.loads(text)
    except ValueError:
        return text
    return body.get("error", text) if isinstance(body, dict) else text


@pytest.mark.parametrize("case", REST_CASES, ids=lambda c: c.id)
def test_rest(server: ServerProcess, case: Rest) -> None:
    r = send(server, case)
    message = error_text(r.text)
    assert r.status_code < 500, f"5xx: {r.status_code} {r.text[:400]}"
    assert r.status_code >= 400, f"accepted: {r.status_code} {r.text[:400]}"
    assert any(n in message for n in case.names), f"unnamed: {case.names} not in {message!r}"
    leaked = [s for s in LEAKS if s in r.text]
    assert not leaked, f"leak: {leaked} in {r.text[:400]}"
    good_rest(server, case.example)


def test_rest_corpus_is_large_enough() -> None:
    assert len(REST_CASES) >= 100
    assert {c.example.model for c in REST_CASES} == {e.model for e in EXAMPLES}


# -- gRPC --------------------------------------------------------------------------------

RAW = {"FP64": "<f8", "FP32": "<f4"}


@dataclass(frozen=True)
class Grpc:
    example: Example
    label: str
    request: pb.ModelInferRequest
    names: tuple[str, ...]
    stream: bool = False

    @property
    def id(self) -> str:
        return f"{self.example.model}-{self.label}"


def packed(elements: list[Any]) -> bytes:
    out = b""
    for element in elements:
        data = element if isinstance(element, bytes) else str(element).encode()
        out += struct.pack("<I", len(data)) + data
    return out


def raw_of(e: Example, rows: int = 1) -> bytes:
    if e.numeric:
        return np.array([e.row] * rows, RAW[e.datatype]).tobytes()
    return packed(e.row)


def call(e: Example, *, raw: list[bytes] | None = None, **tensor: Any) -> pb.ModelInferRequest:
    """A ModelInfer request for ``e``: one input, raw contents unless told otherwise."""
    contents = tensor.pop("contents", None)
    parameters = tensor.pop("parameters", {})
    request = pb.ModelInferRequest(model_name=tensor.pop("model", e.model))
    t = request.inputs.add(
        name=tensor.pop("name", e.input),
        datatype=tensor.pop("datatype", e.datatype),
        shape=tensor.pop("shape", e.shape()),
    )
    assert not tensor, tensor
    for key, value in parameters.items():
        t.parameters[key].CopyFrom(value)
    if contents is not None:
        t.contents.CopyFrom(contents)
    request.raw_input_contents.extend(
        [raw_of(e)] if raw is None and contents is None else raw or []
    )
    return request


def grpc_case(e: Example, label: str, request: pb.ModelInferRequest, *names: str,
              stream: bool = False) -> Grpc:  # fmt: skip
    return Grpc(e, label, request, names or (f"'{e.input}'",), stream)


def numeric_grpc(e: Example) -> list[Grpc]:
    width, dtype = len(e.row), RAW[e.datatype]
    row = np.array([e.row], dtype)
    fp = "fp64_contents" if e.datatype == "FP64" else "fp32_contents"
    nan, inf = row.copy(), row.copy()
    nan[0, 0], inf[0, 0] = np.nan, np.inf
    cases = [
        grpc_case(e, "unknown-datatype-raw", call(e, datatype="BOGUS")),
        grpc_case(e, "raw-short", call(e, raw=[row.tobytes()[:-3]])),
        grpc_case(e, "raw-one-value-short", call(e, raw=[row[:, :-1].tobytes()])),
        grpc_case(e, "raw-long", call(e, raw=[row.tobytes() + b"\0" * 8])),
        grpc_case(
            e, "extra-raw", call(e, raw=[row.tobytes(), row.tobytes()]), "raw_input_contents"
        ),
        grpc_case(
            e,
            "raw-and-typed",
            call(e, raw=[row.tobytes()], contents=pb.InferTensorContents(**{fp: e.row})),
            "raw_input_contents",
        ),
        grpc_case(e, "no-contents", call(e, raw=[])),
        grpc_case(
            e,
            "content-type-int64",
            call(e, parameters={"content_type": pb.InferParameter(int64_param=5)}),
            "content_type",
        ),
        grpc_case(
            e,
            "unknown-content-type",
            call(e, parameters={"content_type": pb.InferParameter(string_param="bogus")}),
            "content_type",
        ),
        grpc_case(
            e,
            "int-contents",
            call(e, contents=pb.InferTensorContents(int_contents=[int(v) for v in e.row])),
        ),
        grpc_case(
            e,
            "bool-contents",
            call(e, contents=pb.InferTensorContents(bool_contents=[True] * width)),
        ),
        grpc_case(
            e,
            "bytes-contents",
            call(e, contents=pb.InferTensorContents(bytes_contents=[b"x"] * width)),
        ),
        grpc_case(
            e, "typed-count-mismatch", call(e, contents=pb.InferTensorContents(**{fp: e.row[:-1]}))
        ),
        grpc_case(e, "zero-rows", call(e, shape=[0, width], raw=[b""])),
        grpc_case(
            e,
            "shape-not-declared",
            call(e, shape=[1, width + 1], raw=[np.zeros(width + 1, dtype).tobytes()]),
        ),
        grpc_case(e, "no-shape", call(e, shape=[], raw=[np.zeros(1, dtype).tobytes()])),
        grpc_case(
            e, "wrong-datatype", call(e, datatype="INT64", raw=[row.astype("<i8").tobytes()])
        ),
        grpc_case(
            e, "bytes-datatype", call(e, datatype="BYTES", shape=[width], raw=[packed(e.row)])
        ),
        grpc_case(e, "wrong-name", call(e, name="x"), "'x'"),
        grpc_case(e, "unknown-output", _with_output(call(e), "nope"), "nope"),
        grpc_case(e, "stream-malformed", call(e, datatype="BOGUS"), stream=True),
    ]
    if e is IRIS:  # scikit-learn refuses NaN and infinities; XGBoost takes them
        cases.append(grpc_case(e, "nan", call(e, raw=[nan.tobytes()])))
        cases.append(grpc_case(e, "infinity", call(e, raw=[inf.tobytes()])))
    return cases


def _with_output(request: pb.ModelInferRequest, name: str) -> pb.ModelInferRequest:
    request.outputs.add(name=name)
    return request


def text_grpc(e: Example) -> list[Grpc]:
    n = len(e.row)
    return [
        grpc_case(e, "length-prefix-cut", call(e, raw=[packed(e.row)[:-2]])),
        grpc_case(e, "length-prefix-partial", call(e, raw=[packed(e.row) + b"\x05\0"])),
        grpc_case(e, "too-few-raw", call(e, shape=[n + 1])),
        grpc_case(
            e,
            "typed-too-few",
            call(
                e,
                shape=[n + 1],
                contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in e.row]),
            ),
        ),
        grpc_case(
            e, "fp32-contents", call(e, contents=pb.InferTensorContents(fp32_contents=[1.0] * n))
        ),
        grpc_case(e, "extra-raw", call(e, raw=[packed(e.row)] * 2), "raw_input_contents"),
        grpc_case(
            e,
            "raw-and-typed",
            call(
                e,
                raw=[packed(e.row)],
                contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in e.row]),
            ),
            "raw_input_contents",
        ),
        grpc_case(
            e,
            "content-type-int64",
            call(e, parameters={"content_type": pb.InferParameter(int64_param=5)}),
            "content_type",
        ),
        grpc_case(e, "zero", call(e, shape=[0], raw=[b""])),
        grpc_case(e, "two-dimensions", call(e, shape=[n, 1])),
        grpc_case(e, "wrong-name", call(e, name="texts"), "'texts'"),
        grpc_case(
            e, "numeric-datatype", call(e, datatype="FP32", raw=[np.ones(n, "<f4").tobytes()])
        ),
        grpc_case(e, "stream-too-few", call(e, shape=[n + 1]), stream=True),
    ]


def any_grpc(e: Example) -> list[Grpc]:
    no_inputs = pb.ModelInferRequest(model_name=e.model)
    unknown = call(e, model="no-such-model")
    return [
        grpc_case(e, "no-inputs", no_inputs, "inputs"),
        grpc_case(e, "unknown-model", unknown, "no-such-model"),
        grpc_case(e, "stream-unknown-model", unknown, "no-such-model", stream=True),
        grpc_case(e, "stream-no-inputs", no_inputs, "inputs", stream=True),
    ]


GRPC_CASES = [c for e in NUMERIC for c in numeric_grpc(e)] + [
    c for e in TEXTS for c in text_grpc(e)
] + [c for e in EXAMPLES for c in any_grpc(e)]  # fmt: skip


def good_grpc(stub: service_pb2_grpc.GRPCInferenceServiceStub, e: Example) -> None:
    answer = stub.ModelInfer(call(e), timeout=60)
    assert answer.outputs, answer


@pytest.fixture(scope="module")
def stub(examples: ServerProcess) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(examples.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def grpc_outcome(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, case: Grpc
) -> tuple[grpc.StatusCode, str]:
    try:
        if case.stream:
            for _ in stub.ModelStreamInfer(iter([case.request]), timeout=60):
                pass
        else:
            stub.ModelInfer(case.request, timeout=60)
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("case", GRPC_CASES, ids=lambda c: c.id)
def test_grpc(server: ServerProcess, stub: service_pb2_grpc.GRPCInferenceServiceStub,
              case: Grpc) -> None:  # fmt: skip
    code, message = grpc_outcome(stub, case)
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
        f"5xx: {code} {message[:400]}"
    )
    assert code != grpc.StatusCode.OK, "accepted"
    assert any(n in message for n in case.names), f"unnamed: {case.names} not in {message!r}"
    leaked = [s for s in LEAKS if s in message]
    assert not leaked, f"leak: {leaked} in {message[:400]}"
    good_grpc(stub, case.example)


def test_grpc_corpus_is_large_enough() -> None:
    assert len(GRPC_CASES) >= 60
    assert {c.example.model for c in GRPC_CASES} == {e.model for e in EXAMPLES}


# -- what the checks let through, and what the client and the log are told ----------------


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_batch_of_texts_in_args_gets_one_answer_per_text(
    server: ServerProcess, protocol: str
) -> None:
    client = make_client(protocol, server)
    sentences = ("i love this great movie", "what a terrible day", "a great day")
    result = infer(client, "sentiment", {"args": ids(*sentences)})
    answers = [json.loads(v) for v in texts(result, "output")]
    assert [a["label"] for a in answers] == ["POSITIVE", "NEGATIVE", "POSITIVE"]
    (one,) = [json.loads(v) for v in texts(infer(client, "sentiment", {"args": ids(sentences[1])}),
                                            "output")]  # fmt: skip
    assert one == answers[1]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_sentiment_metadata_names_the_output_it_answers(
    server: ServerProcess, protocol: str
) -> None:
    client = make_client(protocol, server)
    meta = client.get_model_metadata("sentiment")
    if not isinstance(meta, dict):
        meta = MessageToDict(meta, preserving_proto_field_name=True)
    [output] = meta["outputs"]
    assert (output["name"], output["datatype"]) == ("output", "BYTES")
    if protocol == "http":  # Triton's TensorMetadata message has no parameters
        assert output["parameters"]["content_type"] == "hg_jsonlist"
    assert [i["name"] for i in meta["inputs"]] == ["args"]
    answer = requests.post(
        f"{server.base}/v2/models/sentiment/infer", json=SENTIMENT.body(), timeout=60
    ).json()
    assert [(o["name"], o["parameters"]["content_type"]) for o in answer["outputs"]] == [
        ("output", "hg_jsonlist")
    ]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_nan_for_a_model_that_refuses_it_is_a_400_logged_with_the_request_id(
    server: ServerProcess, protocol: str
) -> None:
    client = make_client(protocol, server)
    mod = httpclient if protocol == "http" else grpcclient
    tensor = mod.InferInput("input-0", [1, 4], "FP64")
    tensor.set_data_from_numpy(np.array([[5.1, np.nan, 1.4, 0.2]]))  # binary over REST
    request_id = f"nan-{protocol}"
    message = expect_error(
        client, lambda: client.infer("iris", [tensor], request_id=request_id),
        400, "INVALID_ARGUMENT", "input 'input-0' carries NaN or an infinite value",
    )  # fmt: skip
    assert "LogisticRegression" not in message
    logged = [line for line in server.log().splitlines() if request_id in line]
    assert logged and "Input X contains NaN" in logged[0], logged
    good_rest(server, IRIS)
