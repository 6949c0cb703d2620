"""`modelyard validate PATH...`: files, model folders and folders of them; exit 0 or 2."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.declarations import model_folder, run_cli
from tests.support.server import REPO


def test_the_repository_models_are_valid() -> None:
    result = run_cli("validate", str(REPO / "model-settings"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"{REPO / 'model-settings' / 'iris' / 'model.yaml'}: valid" in lines
    assert f"{REPO / 'model-settings' / 'sentiment' / 'model-settings.json'}: valid" in lines
    assert lines[-1] == "3 files checked: all valid"


def test_plain_model_settings_are_checked_strictly(tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    settings = json.loads((REPO / "model-settings/breast-cancer/model-settings.json").read_text())
    settings["paramaters"] = settings.pop("parameters")
    settings["inputs"][0]["datatype"] = "float32"
    (folder / "model-settings.json").write_text(json.dumps(settings))
    result = run_cli("validate", str(folder))
    assert result.returncode == 2
    file = folder / "model-settings.json"
    assert result.stdout.splitlines() == [
        f"{file}: /inputs/0/datatype: 'float32' is not one of BOOL, UINT8, UINT16, UINT32, "
        "UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES; did you mean 'FP32'?",
        f"{file}: /paramaters: unknown key 'paramaters'; did you mean 'parameters'?",
        "1 file checked: 0 valid, 1 invalid (2 problems)",
    ]


def test_several_paths_one_summary(tmp_path: Path) -> None:
    good = model_folder(tmp_path / "good")
    bad = model_folder(tmp_path / "bad", "name: bad\nversion: '1'\nruntime: sklearn\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("validate", str(good / "model.yaml"), str(bad), str(empty))
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        f"{good / 'model.yaml'}: valid",
        f"{bad / 'model.yaml'}: /model: missing: runtime sklearn needs it: "
        "The trained artifact and what it needs.",
        f"{empty}: /: no model folders here: a model folder holds a model.yaml or a "
        "model-settings.json (`modelyard new` makes one)",
        "3 files checked: 1 valid, 2 invalid (2 problems)",
    ]


def test_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr
