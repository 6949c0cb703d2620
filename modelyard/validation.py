"""Validation of model folders (the declaration schema arrives with `modelyard validate`)."""

from pathlib import Path
from typing import Any

from modelyard.errors import Problem


def check_model_settings(data: dict[str, Any], path: Path) -> list[Problem]:
    problems = []
    if not isinstance(data.get("name"), str) or not data.get("name"):
        problems.append(Problem(str(path), "/name", "required: the model's V2 name"))
    if not isinstance(data.get("implementation"), str):
        problems.append(
            Problem(
                str(path),
                "/implementation",
                "required: the runtime class, e.g. mlserver_sklearn.SKLearnModel",
            )
        )
    return problems
