"""What a declaration's monitoring says, as `modelyard validate` checks it and as the
quality commands refuse what they cannot compute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelyard.declarations.load import declaration_problems
from tests.support.declarations import base, model_folder, run_cli

CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "scores-without-task": (
        {"scores": {"a": "score", "b": "score"}},
        "/monitoring/task",
        "need a task: classification or regression",
    ),
    "regression-with-scores": (
        {"task": "regression", "prediction": "score", "scores": {"a": "score", "b": "score"}},
        "/monitoring/scores",
        "a regression has no class scores",
    ),
    "regression-without-prediction": (
        {"task": "regression"},
        "/monitoring/prediction",
        "name the column (and output) holding the predicted value",
    ),
    "classification-with-nothing": (
        {"task": "classification"},
        "/monitoring/prediction",
        "or scores",
    ),
    "unknown-column": (
        {"task": "classification", "scores": {"yes": "score", "no": "p_no"}},
        "/monitoring/scores/no",
        "'p_no' is neither a predictions column nor an output; use one of score, user_id",
    ),
}


@pytest.mark.parametrize(("monitoring", "pointer", "message"), CASES.values(), ids=CASES.keys())
def test_validate_names_the_monitoring_mistake(
    tmp_path: Path, monitoring: dict[str, Any], pointer: str, message: str
) -> None:
    data = base()
    data["monitoring"] = {"payload_sample_rate": 0.1, **monitoring}
    folder = model_folder(tmp_path / "scorer", data)
    problems = declaration_problems(folder / "model.yaml")
    assert [(p.pointer, message in p.message) for p in problems] == [(pointer, True)], problems


def test_a_complete_monitoring_block_is_valid(tmp_path: Path) -> None:
    data = base()
    data["monitoring"] = {"task": "regression", "prediction": "score", "payload_sample_rate": 1}
    folder = model_folder(tmp_path / "scorer", data)
    assert declaration_problems(folder / "model.yaml") == []


def test_metrics_says_what_is_missing(tmp_path: Path) -> None:
    data = base()
    del data["monitoring"]
    folder = model_folder(tmp_path / "scorer", data)
    result = run_cli("metrics", str(folder))
    assert result.returncode == 1
    assert "declares no monitoring.task; add e.g. monitoring:" in result.stderr

    data["monitoring"] = {"task": "regression", "prediction": "score"}
    model_folder(tmp_path / "scorer", data)
    result = run_cli("metrics", "scorer", "--dir", str(tmp_path))
    assert result.returncode == 1
    assert "no labelled predictions yet" in result.stdout
    assert "modelyard feedback load scorer FILE" in result.stdout
