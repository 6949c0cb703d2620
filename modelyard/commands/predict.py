"""`modelyard predict NAME --data FILE`: one V2 request to a running server, its answer
as a table.

FILE is a V2 inference request (``.json``), or rows (``.csv``, ``.parquet``) turned
into the model's inputs as its metadata declares them: the columns named like the
inputs, one tensor each; or, for a model with one input of shape ``[-1, N]``, the N
columns as its rows. The request goes over REST (JSON tensors, or binary with
``--binary``) or gRPC with tritonclient.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

# V2 datatype -> numpy dtype name.
DTYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32",
    "UINT64": "uint64", "INT8": "int8", "INT16": "int16", "INT32": "int32",
    "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64",
    "BYTES": "object",
}  # fmt: skip
ROW_FILES = (".csv", ".parquet")


class Tensor:
    """One input: its name, V2 datatype and data as a numpy array of its shape."""

    def __init__(self, name: str, datatype: str, array: Any):
        self.name, self.datatype, self.array = name, datatype, array


def _array(name: str, datatype: str, shape: list[int], data: Any) -> Any:
    import numpy as np

    if datatype not in DTYPES:
        raise click.ClickException(f"input '{name}': unknown datatype {datatype!r}")
    values = data
    if datatype == "BYTES":
        flat = np.array(data, dtype=object).ravel()
        values = [v.encode() if isinstance(v, str) else v for v in flat]
    try:
        return np.array(values, dtype=DTYPES[datatype]).reshape(shape)
    except (ValueError, TypeError) as e:
        raise click.ClickException(
            f"input '{name}': its data does not fit shape {shape} as {datatype}: {e}"
        ) from None


def from_request_file(path: Path) -> list[Tensor]:
    try:
        body = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise click.ClickException(f"{path} is not valid JSON: {e}") from None
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or not inputs:
        raise click.ClickException(
            f'{path} is not a V2 inference request: it needs an "inputs" list of tensors '
            '({"name": ..., "datatype": ..., "shape": [...], "data": [...]})'
        )
    tensors = []
    for i, spec in enumerate(inputs):
        missing = [k for k in ("name", "datatype", "shape", "data") if k not in spec]
        if missing:
            raise click.ClickException(f"{path}: input {i} has no {', '.join(missing)}")
        array = _array(spec["name"], spec["datatype"], spec["shape"], spec["data"])
        tensors.append(Tensor(spec["name"], spec["datatype"], array))
    return tensors


def read_rows(path: Path) -> Any:
    import pandas as pd

    try:
        if path.suffix == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except Exception as e:  # pandas and pyarrow raise many kinds for a bad file
        raise click.ClickException(f"cannot read {path} as {path.suffix[1:]}: {e}") from None


def from_rows(frame: Any, model: str, declared: list[dict[str, Any]]) -> list[Tensor]:
    """The rows as the model's declared inputs (its V2 metadata)."""
    if not declared:
        raise click.ClickException(
            f"model '{model}' declares no inputs, so rows cannot be turned into a request; "
            "send a V2 request file (.json) instead"
        )
    columns = [str(c) for c in frame.columns]
    names = [d["name"] for d in declared]
    if all(n in columns for n in names):  # one input per column
        tensors = []
        for d in declared:
            values = frame[d["name"]].to_numpy()
            shape = [len(values), 1] if len(d["shape"]) == 2 else [len(values)]
            array = _array(d["name"], d["datatype"], shape, values.tolist())
            tensors.append(Tensor(d["name"], d["datatype"], array))
        return tensors
    if len(declared) == 1 and len(declared[0]["shape"]) == 2:  # rows of one input
        d = declared[0]
        width = d["shape"][1]
        if width not in (-1, len(columns)):
            raise click.ClickException(
                f"model '{model}': input '{d['name']}' takes {width} columns per row; "
                f"the file has {len(columns)} ({', '.join(columns)})"
            )
        values = frame.to_numpy()
        array = _array(d["name"], d["datatype"], list(values.shape), values.tolist())
        return [Tensor(d["name"], d["datatype"], array)]
    raise click.ClickException(
        f"model '{model}' takes inputs {', '.join(names)}; the file's columns are "
        f"{', '.join(columns)}: name the columns like the inputs, or send a V2 request file"
    )


class Client:
    """tritonclient over REST or gRPC, with errors as one clear line."""

    def __init__(self, url: str | None, grpc: bool, binary: bool):
        if grpc:
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module  # type: ignore[no-redef]
        self.module: Any = module
        self.grpc, self.binary = grpc, binary
        default = "127.0.0.1:8081" if grpc else "127.0.0.1:8080"
        self.url = url or default
        address = self.url.split("://", 1)[-1].rstrip("/")
        ssl = self.url.startswith("https://")
        kwargs = {} if grpc else {"ssl": ssl}
        self.client = module.InferenceServerClient(address, **kwargs)

    def call(self, what: str, model: str, call: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return call()
        except InferenceServerException as e:
            if e.status() in ("404", "StatusCode.NOT_FOUND"):
                raise click.ClickException(
                    f"model '{model}' is not served at {self.url}: {e.message()}"
                ) from None
            if e.status() == "StatusCode.UNAVAILABLE":
                raise click.ClickException(
                    f"cannot reach {self.url} ({e.message()}); is `modelyard serve` running there?"
                ) from None
            raise click.ClickException(f"{what} failed at {self.url}: {e.message()}") from None
        except Exception as e:  # connection refused, DNS, TLS: the client library's own
            raise click.ClickException(
                f"cannot reach {self.url} ({e}); is `modelyard serve` running there?"
            ) from None

    def declared_inputs(self, model: str, version: str) -> list[dict[str, Any]]:
        meta = self.call(
            "reading the metadata", model, lambda: self.client.get_model_metadata(model, version)
        )
        if self.grpc:
            return [
                {"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]}
                for t in meta.inputs
            ]
        return list(meta.get("inputs") or [])

    def infer(self, model: str, version: str, tensors: list[Tensor]) -> Any:
        inputs = []
        for t in tensors:
            infer_input = self.module.InferInput(t.name, list(t.array.shape), t.datatype)
            if self.grpc:
                infer_input.set_data_from_numpy(t.array)
            else:
                infer_input.set_data_from_numpy(t.array, binary_data=self.binary)
            inputs.append(infer_input)
        return self.call(
            "inference", model, lambda: self.client.infer(model, inputs, model_version=version)
        )

    def outputs(self, result: Any) -> list[tuple[str, Any]]:
        response = result.get_response()
        if self.grpc:
            names = [o.name for o in response.outputs]
        else:
            names = [o["name"] for o in response["outputs"]]
        return [(n, result.as_numpy(n)) for n in names]


def _cell(value: Any) -> str:
    import numpy as np

    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.ndarray):
        flat = value.ravel()
        if flat.size == 1:
            return _cell(flat[0])
        return "[" + ", ".join(_cell(v) for v in flat) + "]"
    if isinstance(value, np.generic):
        return _cell(value.item())
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def answer_table(model: str, outputs: list[tuple[str, Any]]) -> Any:
    """One row per row of the answer (its first dimension), one column per output."""
    from rich.table import Table

    table = Table(title=f"{model}")
    table.add_column("row", justify="right")
    for name, _ in outputs:
        table.add_column(name, overflow="fold")
    rows = max((len(a) if a.ndim else 1) for _, a in outputs) if outputs else 0
    for i in range(rows):
        cells = [str(i)]
        for _, array in outputs:
            if not array.ndim:
                cells.append(_cell(array))
            else:
                cells.append(_cell(array[i]) if i < len(array) else "")
        table.add_row(*cells)
    return table


@click.command()
@click.argument("name")
@click.option(
    "--data", "data", required=True, type=click.Path(path_type=Path),
    help="A V2 inference request (.json), or rows (.csv, .parquet).",
)  # fmt: skip
@click.option(
    "--url", default=None, envvar="MODELYARD_URL",
    help="The server: REST address (default http://127.0.0.1:8080), or with --grpc "
    "its gRPC address (default 127.0.0.1:8081).",
)  # fmt: skip
@click.option("--grpc", "use_grpc", is_flag=True, help="Send over gRPC instead of REST.")
@click.option("--binary", is_flag=True, help="REST: send and receive binary tensors.")
@click.option("--version", "version", default="", help="The model version (default: served).")
@click.option("--json", "as_json", is_flag=True, help="Print the outputs as JSON.")
def predict(
    name: str,
    data: Path,
    url: str | None,
    use_grpc: bool,
    binary: bool,
    version: str,
    as_json: bool,
) -> None:
    """Send one V2 request to model NAME of a running server and print its answer.

    --data is a V2 request (.json), or a CSV or Parquet file of rows, turned into
    the model's declared inputs (columns named like the inputs, or the N columns of
    a model with one [-1, N] input).
    """
    from rich.console import Console

    if not data.is_file():
        raise click.ClickException(f"{data}: no such file")
    if binary and use_grpc:
        raise click.ClickException("--binary is for REST; gRPC always sends binary tensors")
    suffix = data.suffix.lower()
    if suffix not in (".json", *ROW_FILES):
        raise click.ClickException(
            f"{data}: cannot tell what it holds from '{suffix or 'no suffix'}'; "
            "give a V2 request (.json), or rows (.csv, .parquet)"
        )
    client = Client(url, use_grpc, binary)
    if suffix == ".json":
        tensors = from_request_file(data)
    else:
        tensors = from_rows(read_rows(data), name, client.declared_inputs(name, version))
    outputs = client.outputs(client.infer(name, version, tensors))
    if as_json:
        click.echo(json.dumps({n: _jsonable(a.tolist()) for n, a in outputs}))
        return
    console = Console(width=160 if not sys.stdout.isatty() else None)
    console.print(answer_table(name, outputs))


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value.decode(errors="replace") if isinstance(value, bytes) else value
