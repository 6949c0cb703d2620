"""Declarations -> MLServer settings: ``model-settings.json`` for the model and
``settings.json`` for the server.

The generated files keep ``${VAR}`` placeholders as written, so a secret in the
environment never lands in a file or a ConfigMap; runtimes expand them at load.
The output is deterministic (sorted keys, fixed layout) so it can be reviewed and
diffed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from modelyard.declarations.integrity import EXTRA_KEY
from modelyard.declarations.load import DECLARATION_FILENAME, load_declaration
from modelyard.errors import Problem

MODEL_SETTINGS_FILENAME = "model-settings.json"
SERVER_SETTINGS_FILENAME = "settings.json"

IMPLEMENTATIONS = {
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
    "lightgbm": "mlserver_lightgbm.LightGBMModel",
    "catboost": "mlserver_catboost.CatboostModel",
    "mlflow": "modelyard_runtimes.mlflow.MLflowRuntime",
    "onnx": "modelyard_runtimes.onnx.OnnxRuntime",
    "huggingface": "modelyard_runtimes.huggingface.HuggingFaceRuntime",
    "predictor": "modelyard_runtimes.predictor.PredictorRuntime",
}
# `modelyard serve` answers in the server process unless told otherwise.
DEFAULT_WORKERS = 0


def implementation(decl: dict[str, Any]) -> str:
    if decl["runtime"] == "custom":
        return decl["implementation"]
    return IMPLEMENTATIONS[decl["runtime"]]


def _extra(decl: dict[str, Any]) -> dict[str, Any]:
    model = decl.get("model") or {}
    runtime = decl["runtime"]
    extra: dict[str, Any] = {}
    if runtime == "predictor":
        extra["predictor"] = decl["predictor"]
        if "parameters" in model:
            extra["parameters"] = model["parameters"]
    elif runtime in ("huggingface", "custom"):
        extra.update(model.get("parameters") or {})
    # Batch scoring and lookups by entity id, whatever the runtime (the pre-built
    # runtimes ignore keys of extra they do not know).
    for key in ("features", "predictions"):
        if key in decl:
            extra[key] = decl[key]
    # sha256 and versions, checked before any runtime loads the artifact, and monitoring.
    carried: dict[str, Any] = {k: model[k] for k in ("sha256", "versions") if k in model}
    if decl.get("monitoring"):
        carried["monitoring"] = decl["monitoring"]  # see modelyard.declarations.monitoring
    if decl.get("rollout"):
        carried["rollout"] = decl["rollout"]  # see modelyard.serving.rollouts
    if decl.get("python"):
        carried["python"] = decl["python"]  # see modelyard.environments
    if carried:
        extra[EXTRA_KEY] = carried
    return extra


def model_settings(decl: dict[str, Any]) -> dict[str, Any]:
    """MLServer's model settings for a valid declaration (placeholders kept)."""
    model = decl.get("model") or {}
    uri = model.get("uri", "./" if decl["runtime"] == "predictor" else None)
    parameters: dict[str, Any] = {"version": decl["version"]}
    if uri is not None:
        parameters["uri"] = uri
    extra = _extra(decl)
    if extra:
        parameters["extra"] = extra
    settings: dict[str, Any] = {
        "name": decl["name"],
        "implementation": implementation(decl),
        "parameters": parameters,
    }
    for key in ("inputs", "outputs"):
        if key in decl:
            settings[key] = decl[key]
    serving = decl.get("serving") or {}
    if "max_batch_size" in serving:
        settings["max_batch_size"] = serving["max_batch_size"]
    if "max_batch_time_ms" in serving:
        settings["max_batch_time"] = serving["max_batch_time_ms"] / 1000
    return settings


def server_settings(decl: dict[str, Any]) -> dict[str, Any]:
    """MLServer's server settings (``settings.json``) the declaration determines."""
    serving = decl.get("serving") or {}
    settings: dict[str, Any] = {"parallel_workers": serving.get("workers", DEFAULT_WORKERS)}
    if "max_message_mb" in serving:
        settings["grpc_max_message_length"] = serving["max_message_mb"] * 1024 * 1024
    return settings


def dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def model_settings_for_folder(folder: Path) -> dict[str, Any]:
    """The model settings of a declaration folder; InvalidModelFolder lists every problem."""
    return model_settings(load_declaration(folder / DECLARATION_FILENAME))


def unrelocatable(decl: dict[str, Any], folder: Path) -> list[Problem]:
    """What only resolves from the model folder itself, so cannot be built elsewhere:
    the runtimes load a predictor file, an implementation module and features files
    from the folder of the settings file (and never from outside it)."""
    file = str(folder / DECLARATION_FILENAME)
    why = "is loaded from the model folder, so it cannot move; build in place (without --out)"
    found = []
    spec = decl.get("predictor", "")
    if decl["runtime"] == "predictor" and spec.partition(":")[0].endswith(".py"):
        found.append(Problem(file, "/predictor", f"{spec} {why}"))
    module = decl.get("implementation", "").rpartition(".")[0]
    if (
        decl["runtime"] == "custom"
        and (folder / Path(*module.split("."))).with_suffix(".py").is_file()
    ):
        found.append(Problem(file, "/implementation", f"{module}.py {why}"))
    for key in ("sql", "preprocess"):
        if key in (decl.get("features") or {}):
            found.append(Problem(file, f"/features/{key}", f"{decl['features'][key]} {why}"))
    return found


def relocated(settings: dict[str, Any], folder: Path, dest: Path) -> dict[str, Any]:
    """``settings`` written for ``folder``, with a local ``parameters.uri`` rewritten so
    it resolves from ``dest`` (MLServer reads it relative to the settings file)."""
    out = json.loads(json.dumps(settings))
    params = out.get("parameters") or {}
    uri = params.get("uri")
    if uri and urlparse(uri).scheme == "" and not os.path.isabs(uri):
        target = os.path.relpath((folder / uri).resolve(), dest.resolve())
        params["uri"] = target + ("/" if uri.endswith("/") and not target.endswith("/") else "")
    return out


def build(folder: Path, out: Path | None = None) -> list[Path]:
    """Write ``model-settings.json`` and ``settings.json`` for the declaration in
    ``folder``: next to it, or in ``out/<folder name>/``. Returns the files written."""
    decl = load_declaration(folder / DECLARATION_FILENAME)
    settings = model_settings(decl)
    dest = folder
    if out is not None:
        dest = out / folder.resolve().name
        dest.mkdir(parents=True, exist_ok=True)
        settings = relocated(settings, folder, dest)
    written = []
    for name, data in (
        (MODEL_SETTINGS_FILENAME, settings),
        (SERVER_SETTINGS_FILENAME, server_settings(decl)),
    ):
        path = dest / name
        path.write_text(dumps(data))
        written.append(path)
    return written
