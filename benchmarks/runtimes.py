"""`make bench`'s runtimes part: a LightGBM and an ONNX model served by plain
`mlserver start` and by `modelyard serve` (same settings, same clients, same run), 1-row
and 1,000-row over REST and gRPC, against the library's own in-process predict.

Both models are trained here on breast-cancer (30 features): a LightGBM booster of 50
trees, and a scikit-learn LogisticRegression exported to ONNX with skl2onnx. Plain
MLServer serves the LightGBM model with its own runtime (mlserver-lightgbm) and the
ONNX model with modelyard's (MLServer has no ONNX runtime), so the ONNX rows measure
the servers alone. modelyard is run twice, as it serves (LightGBM predicted directly, both
models' gRPC lanes) and with ``MODELYARD_DIRECT_PREDICT=off`` (every call through the
runtime's own predict), so the direct paths' share is a same-run ratio.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sklearn.datasets import load_breast_cancer

from benchmarks.load import (
    Load,
    PlainMLServer,
    calls_per_s,
    grpc_body,
    h2load_grpc,
    plain_model_dir,
    rest_body,
    wrk,
)
from modelyard.serving.direct import DIRECT_ENV, predict_directly
from tests.support.server import ServerProcess

# model -> (input name, datatype)
INPUTS = {"cancer-lgb": ("input-0", "FP64"), "cancer-onnx": ("float_input", "FP32")}
SIZES = ((1, 1), (1, 16), (1000, 16))  # (rows, callers)


def make_models(root: Path) -> dict[str, Callable[[np.ndarray], Any]]:
    """The two model folders under ``root``; returns each model's in-process predict."""
    import lightgbm as lgb
    import onnxruntime as ort
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    x, y = load_breast_cancer(return_X_y=True)
    params = {"objective": "binary", "verbose": -1, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, y), num_boost_round=50)
    (root / "cancer-lgb").mkdir(parents=True)
    booster.save_model(str(root / "cancer-lgb" / "model.txt"))
    logistic = LogisticRegression(max_iter=5000).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = convert_sklearn(
            logistic,
            initial_types=[("float_input", FloatTensorType([None, 30]))],
            options={"zipmap": False},
            target_opset=17,
        )
    (root / "cancer-onnx").mkdir(parents=True)
    (root / "cancer-onnx" / "model.onnx").write_bytes(onx.SerializeToString())
    for name, runtime, uri in (
        ("cancer-lgb", "lightgbm", "model.txt"),
        ("cancer-onnx", "onnx", "model.onnx"),
    ):
        decl = {"name": name, "version": "1", "runtime": runtime, "model": {"uri": uri}}
        (root / name / "model.yaml").write_text(yaml.safe_dump(decl))
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(root / "cancer-onnx" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    return {
        "cancer-lgb": lambda rows: lgb.Booster.predict(booster, rows),
        "cancer-onnx": lambda rows: session.run(None, {"float_input": rows}),
    }


def _rows(model: str, n: int) -> np.ndarray:
    x = np.resize(load_breast_cancer().data, (n, 30))
    return x.astype(np.float32 if INPUTS[model][1] == "FP32" else np.float64)


def _measure(server: ServerProcess, model: str, rows: int, callers: int, protocol: str,
             duration: float) -> Load:  # fmt: skip
    name, datatype = INPUTS[model]
    array = _rows(model, rows)
    if protocol == "rest":
        url = f"{server.base}/v2/models/{model}/infer"
        return wrk(url, rest_body(name, array, datatype), callers, duration)
    body = grpc_body(model, name, array, datatype)
    metrics = f"http://127.0.0.1:{server.metrics_port}/metrics"
    return h2load_grpc(server.grpc_url, body, callers, duration, metrics)


def _direct_lightgbm(root: Path) -> dict[str, float]:
    """1-row predict of the LightGBM model in process: Booster.predict against the
    direct path modelyard serves it through."""
    import asyncio

    from mlserver.settings import ModelParameters, ModelSettings
    from mlserver_lightgbm import LightGBMModel

    uri = str(root / "cancer-lgb" / "model.txt")
    settings = ModelSettings(
        name="cancer-lgb", implementation=LightGBMModel, parameters=ModelParameters(uri=uri)
    )
    model = LightGBMModel(settings)
    asyncio.run(model.load())
    booster, row = model._model, _rows("cancer-lgb", 1)
    library = calls_per_s(lambda: type(booster).predict(booster, row))
    if not predict_directly(model):
        raise RuntimeError("cancer-lgb: the direct predictions did not agree at load")
    direct = calls_per_s(lambda: booster.predict(row))
    return {"library_us": 1e6 / library, "direct_us": 1e6 / direct, "speedup": direct / library}


def runtimes(args: argparse.Namespace, tmp: Path) -> dict:
    folders = tmp / "folders"
    predict = make_models(folders)
    plain = plain_model_dir([folders / m for m in INPUTS], tmp / "models")
    results: dict[str, dict[str, dict]] = {}
    for label, cls, extra, env in (
        ("mlserver", PlainMLServer, (), {}),
        ("modelyard", ServerProcess, ("--no-watch",), {}),
        ("modelyard-off", ServerProcess, ("--no-watch",), {DIRECT_ENV: "off"}),
    ):
        server = cls(plain, tmp / f"{label}.log", extra_args=extra, env=env).start()
        try:
            server.wait_ready(timeout=300)
            for model in INPUTS:
                for protocol in ("rest", "grpc"):
                    for rows, callers in SIZES:
                        key = f"{model} {rows}-row {protocol} c{callers}"
                        _measure(server, model, rows, callers, protocol, 1.0)  # warm-up
                        load = _measure(server, model, rows, callers, protocol, args.duration)
                        results.setdefault(key, {})[label] = load.as_dict()
        finally:
            server.stop()
    raw = {}
    for model, fn in predict.items():
        for rows in (1, 1000):
            data = _rows(model, rows)
            raw[f"{model} {rows}-row"] = calls_per_s(partial(fn, data)) * rows
    print(f"\n{'scenario':32} {'plain MLServer':>22} {'modelyard':>22} {'ratio':>6}"
          f" {'direct off':>22} {'direct/off':>10} {'raw predict rows/s':>19}")  # fmt: skip
    table = []
    for key, both in results.items():
        base, ours, off = both["mlserver"], both["modelyard"], both["modelyard-off"]
        rows = int(key.split()[1].split("-")[0])
        raw_rows = raw[" ".join(key.split()[:2])]
        row = {
            "scenario": key,
            "mlserver": base,
            "modelyard": ours,
            "ratio_rps": ours["rps"] / base["rps"] if base["rps"] else float("nan"),
            "direct_off": off,
            "direct_ratio_rps": ours["rps"] / off["rps"] if off["rps"] else float("nan"),
            "raw_rows_per_s": raw_rows,
            "served_rows_per_s": ours["rps"] * rows,
        }
        table.append(row)
        print(f"{key:32} {base['rps']:7.0f} p99 {base['p99_ms']:6.1f} {base['errors']:3d}"
              f" {ours['rps']:7.0f} p99 {ours['p99_ms']:6.1f} {ours['errors']:3d}"
              f" {row['ratio_rps']:5.2f}x {off['rps']:7.0f} p99 {off['p99_ms']:6.1f}"
              f" {off['errors']:3d} {row['direct_ratio_rps']:9.2f}x {raw_rows:12,.0f}")  # fmt: skip
    direct = _direct_lightgbm(folders)
    print(f"\nLightGBM 1-row predict in process: {direct['library_us']:.0f} us Booster.predict,"
          f" {direct['direct_us']:.0f} us direct, {direct['speedup']:.2f}x")  # fmt: skip
    onnx = _onnx_lane(folders)
    for rows, times in onnx.items():
        print(f"ONNX {rows}-row gRPC call in process: {times['v2_us']:.0f} us through V2 objects"
              f" and predict, {times['lane_us']:.0f} us the lane, {times['run_us']:.0f} us"
              f" session.run alone")  # fmt: skip
    return {"rows": table, "raw_rows_per_s": raw, "lightgbm_direct": direct, "onnx_lane": onnx}


def _onnx_lane(root: Path) -> dict[int, dict[str, float]]:
    """One gRPC ModelInfer of the ONNX model in process, from its protobuf request to its
    protobuf response: through V2 objects and the runtime's predict (MLServer's way),
    and through the lane; and the session's run alone."""
    import asyncio

    from mlserver.cloudevents import CloudEventsMiddleware
    from mlserver.grpc import dataplane_pb2 as pb
    from mlserver.grpc.converters import ModelInferRequestConverter, ModelInferResponseConverter
    from mlserver.middleware import InferenceMiddlewares
    from mlserver.settings import ModelParameters, ModelSettings, Settings
    from modelyard_runtimes.onnx import OnnxRuntime

    from modelyard.serving.lanes import ArraysLane

    uri = str(root / "cancer-onnx" / "model.onnx")
    settings = ModelSettings(
        name="cancer-onnx", implementation=OnnxRuntime, parameters=ModelParameters(uri=uri)
    )
    model = OnnxRuntime(settings)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(model.load())
    if model.predict_arrays is None:
        raise RuntimeError("cancer-onnx: the lane's answers did not agree at load")
    lane = ArraysLane(model)
    middleware = InferenceMiddlewares(CloudEventsMiddleware(Settings()))
    out = {}
    for rows in (1, 1000):
        x = _rows("cancer-onnx", rows)
        tensor = pb.ModelInferRequest.InferInputTensor(
            name="float_input", datatype="FP32", shape=list(x.shape)
        )
        request = pb.ModelInferRequest(
            model_name="cancer-onnx", inputs=[tensor], raw_input_contents=[x.tobytes()]
        )

        def v2(request: pb.ModelInferRequest = request) -> object:
            # predict never awaits: driven by hand, no event loop's cost is counted.
            call = model.predict(ModelInferRequestConverter.to_types(request))
            try:
                call.send(None)
            except StopIteration as done:
                return ModelInferResponseConverter.from_types(done.value, use_raw=True)
            raise RuntimeError("predict awaited")

        def laned(request: pb.ModelInferRequest = request) -> object:
            return lane.answer(request, middleware)

        def run(x: np.ndarray = x) -> object:
            return model._session.run(None, {"float_input": x})

        out[rows] = {name: 1e6 / calls_per_s(fn) for name, fn in
                     (("v2_us", v2), ("lane_us", laned), ("run_us", run))}  # fmt: skip
    loop.close()
    return out
