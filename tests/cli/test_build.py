"""`modelyard build DIR [--out OUT]`: model-settings.json and settings.json from each
model.yaml, deterministic, and only when every declaration is valid."""

from __future__ import annotations

import json
from pathlib import Path

from modelyard.declarations.folders import load_model_folder
from modelyard.declarations.load import load_declaration
from modelyard.declarations.settings import model_settings, server_settings
from tests.support.declarations import model_folder, run_cli
from tests.support.server import copy_model


def test_build_in_place_is_deterministic(tmp_path: Path) -> None:
    root = tmp_path / "models"
    iris = copy_model("iris", root)
    scorer = model_folder(root / "scorer")
    result = run_cli("build", str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    written = [iris / "model-settings.json", iris / "settings.json"]
    written += [scorer / "model-settings.json", scorer / "settings.json"]
    assert result.stdout.splitlines() == [f"wrote {p}" for p in written]
    first = {p: p.read_bytes() for p in written}

    for folder in (iris, scorer):
        decl = load_declaration(folder / "model.yaml")
        assert json.loads((folder / "model-settings.json").read_text()) == model_settings(decl)
        assert json.loads((folder / "settings.json").read_text()) == server_settings(decl)

    assert run_cli("build", str(root)).returncode == 0
    assert {p: p.read_bytes() for p in written} == first


def test_build_out_rewrites_the_artifact_path(tmp_path: Path) -> None:
    iris = copy_model("iris", tmp_path / "models")
    out = tmp_path / "out"
    result = run_cli("build", str(iris), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    generated = json.loads((out / "iris" / "model-settings.json").read_text())
    assert generated["parameters"]["uri"] == "../../models/iris/model.joblib"
    assert not (iris / "model-settings.json").exists()
    # The built folder is a plain MLServer folder whose artifact resolves.
    settings = load_model_folder(out / "iris")
    assert settings.parameters.uri == str(iris / "model.joblib")


def test_nothing_is_written_when_a_declaration_is_invalid(tmp_path: Path) -> None:
    root = tmp_path / "models"
    good = copy_model("iris", root)
    bad = model_folder(root / "bad", "name: bad\nversion: '1'\nruntime: sklearn\nmodel: {uri: x}\n")
    result = run_cli("build", str(root))
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f"{bad / 'model.yaml'}: /model/uri: x does not exist in {bad}; "
        "add the artifact there or fix the path",
        "2 files checked: 1 valid, 1 invalid (1 problem); nothing written",
    ]
    assert not list(root.rglob("*settings.json"))
    assert good.is_dir()


def test_out_refuses_what_must_stay_in_its_folder(tmp_path: Path) -> None:
    scorer = model_folder(tmp_path / "scorer")
    result = run_cli("build", str(scorer), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert (
        f"{scorer / 'model.yaml'}: /predictor: predictor.py:Scorer is loaded from" in result.stdout
    )
    assert f"{scorer / 'model.yaml'}: /features/sql: features.sql is loaded from" in result.stdout
    assert not (tmp_path / "out").exists()


def test_build_needs_a_declaration(tmp_path: Path) -> None:
    result = run_cli("build", str(tmp_path))
    assert result.returncode == 2
    assert "no model.yaml in" in result.stderr
