"""Declarations -> MLServer settings: the contract the runtimes rely on, and every
generated file checked against MLServer's own settings classes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelyard.declarations.load import load_declaration
from modelyard.declarations.settings import (
    dumps,
    model_settings,
    model_settings_for_folder,
    server_settings,
)
from modelyard.declarations.validate import check_model_settings
from tests.support.declarations import BASE, base
from tests.support.server import REPO

SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}],
    "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1, 1]}],
}


def decl(runtime: str, **extra: Any) -> dict[str, Any]:
    return {"name": "m", "version": "3", "runtime": runtime, **extra}


@pytest.mark.parametrize(
    ("declaration", "expected"),
    [
        (
            decl("sklearn", model={"uri": "model.joblib"}, **SIGNATURE),
            {
                "name": "m",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "model.joblib", "version": "3"},
                **SIGNATURE,
            },
        ),
        (
            decl("xgboost", model={"uri": "model.ubj", "sha256": "ab" * 32}),
            {
                "name": "m",
                "implementation": "mlserver_xgboost.XGBoostModel",
                "parameters": {
                    "uri": "model.ubj",
                    "version": "3",
                    "extra": {"modelyard": {"sha256": "ab" * 32}},
                },
            },
        ),
        (
            decl(
                "huggingface",
                model={
                    "uri": "./",
                    "parameters": {"task": "text-classification"},
                    "versions": {"transformers": "4.41.2"},
                },
            ),
            {
                "name": "m",
                "implementation": "modelyard_runtimes.huggingface.HuggingFaceRuntime",
                "parameters": {
                    "uri": "./",
                    "version": "3",
                    "extra": {
                        "task": "text-classification",
                        "modelyard": {"versions": {"transformers": "4.41.2"}},
                    },
                },
            },
        ),
        (
            decl("predictor", predictor="predictor.py:P"),
            {
                "name": "m",
                "implementation": "modelyard_runtimes.predictor.PredictorRuntime",
                "parameters": {
                    "uri": "./",
                    "version": "3",
                    "extra": {"predictor": "predictor.py:P"},
                },
            },
        ),
        (
            decl("custom", implementation="my_model.Model", model={"parameters": {"k": 1}}),
            {
                "name": "m",
                "implementation": "my_model.Model",
                "parameters": {"version": "3", "extra": {"k": 1}},
            },
        ),
        (
            decl(
                "custom",
                implementation="my_model.Model",
                serving={"max_batch_size": 16, "max_batch_time_ms": 5},
            ),
            {
                "name": "m",
                "implementation": "my_model.Model",
                "parameters": {"version": "3"},
                "max_batch_size": 16,
                "max_batch_time": 0.005,
            },
        ),
    ],
    ids=["sklearn", "xgboost-sha256", "huggingface", "predictor-no-uri", "custom", "batching"],
)
def test_model_settings_contract(declaration: dict[str, Any], expected: dict[str, Any]) -> None:
    assert model_settings(declaration) == expected


def test_predictor_extra_carries_features_predictions_and_placeholders() -> None:
    settings = model_settings(base())
    extra = settings["parameters"]["extra"]
    assert extra == {
        "predictor": "predictor.py:Scorer",
        "features": BASE["features"],
        "predictions": BASE["predictions"],
        "parameters": {"threshold": 0.5},
        "modelyard": {
            "sha256": BASE["model"]["sha256"],
            "versions": BASE["model"]["versions"],
            "monitoring": BASE["monitoring"],
        },
    }
    # Secrets stay in the environment: the placeholders are written as they are.
    assert extra["features"]["source"] == "${FEATURES_DB_URL:-sqlite:///features.db}"
    assert settings["parameters"]["uri"] == "model.bin"


def test_server_settings() -> None:
    assert server_settings(decl("sklearn")) == {"parallel_workers": 0}
    assert server_settings(decl("sklearn", serving={"workers": 2, "max_message_mb": 64})) == {
        "parallel_workers": 2,
        "grpc_max_message_length": 64 * 1024 * 1024,
    }


def test_output_is_deterministic() -> None:
    settings = model_settings(base())
    shuffled = json.loads(json.dumps(settings), object_pairs_hook=lambda p: dict(reversed(p)))
    assert dumps(settings) == dumps(shuffled)
    assert dumps(settings).endswith("}\n")
    text = dumps(settings)
    assert list(json.loads(text)) == sorted(json.loads(text))


def declared_folders() -> list[Path]:
    found = sorted(
        p.parent for top in ("model-settings", "examples") for p in (REPO / top).rglob("model.yaml")
    )
    assert any(f.name == "iris" for f in found)
    return found


# Loads each file in MLServer's settings classes; prints what they make of it.
LOADER = """
import json, sys
from mlserver.settings import ModelSettings, Settings
for model_path, server_path in json.loads(sys.argv[1]):
    model = ModelSettings.parse_file(model_path)
    server = Settings(**json.load(open(server_path)))
    print(json.dumps({
        "name": model.name,
        "implementation": model.implementation_,
        "uri": model.parameters.uri,
        "version": model.version,
        "extra": model.parameters.extra,
        "inputs": [t.model_dump(exclude_none=True) for t in model.inputs],
        "max_batch_size": model.max_batch_size,
        "parallel_workers": server.parallel_workers,
    }))
"""


def test_generated_settings_load_in_mlserver_in_a_scrubbed_environment(tmp_path: Path) -> None:
    """Every model.yaml of the repository, through MLServer's own ModelSettings, with no
    MLSERVER_* variable and no .env around to fill in what the file leaves out."""
    pairs, expected = [], []
    for folder in declared_folders():
        settings = model_settings_for_folder(folder)
        assert check_model_settings(settings, folder / "model-settings.json") == []
        out = tmp_path / "generated" / folder.name
        out.mkdir(parents=True)
        (out / "model-settings.json").write_text(dumps(settings))
        decl = load_declaration(folder / "model.yaml")
        (out / "settings.json").write_text(dumps(server_settings(decl)))
        pairs.append([str(out / "model-settings.json"), str(out / "settings.json")])
        expected.append(settings)
    empty = tmp_path / "cwd"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER")}
    result = subprocess.run(
        [sys.executable, "-c", LOADER, json.dumps(pairs)],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    loaded = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(loaded) == len(expected)
    for got, want in zip(loaded, expected, strict=True):
        assert got["name"] == want["name"]
        assert got["implementation"] == want["implementation"]
        assert got["uri"] == want["parameters"].get("uri")
        assert got["version"] == want["parameters"]["version"]
        assert got["extra"] == want["parameters"].get("extra", {})
        assert got["inputs"] == want.get("inputs", [])
        assert got["max_batch_size"] == want.get("max_batch_size", 0)
