"""`modelyard new`: a model folder from a cookiecutter template.

Each template says which runtimes it takes (the choices of ``runtime`` in its
cookiecutter.json): no-code for MLServer's pre-built runtimes, low-code for a
predictor class, full-custom for a model class behind a FastAPI service.
"""

from __future__ import annotations

import json
import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from modelyard.declarations.schema import declaration_schema
from modelyard.errors import ModelyardError

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# The library a no-code model is trained with, pinned in its model.versions.
RUNTIME_LIBRARIES = {
    "sklearn": "scikit-learn",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "catboost": "catboost",
    "mlflow": "mlflow",
    "onnx": "onnxruntime",
    "huggingface": "transformers",
}
# Pinned in a full-custom service's requirements.txt.
SERVICE_PACKAGES = ("mlserver", "fastapi", "uvicorn", "numpy", "pyyaml")


class ScaffoldError(ModelyardError):
    """The folder cannot be made as asked; the message says what to ask instead."""


def templates() -> dict[str, list[str]]:
    """Template name -> the runtimes it takes."""
    found = {}
    for path in sorted(TEMPLATES_DIR.glob("*/cookiecutter.json")):
        found[path.parent.name] = json.loads(path.read_text())["runtime"]
    return found


def check_combination(runtime: str, template: str) -> None:
    available = templates()
    if template not in available:
        raise ScaffoldError(f"no template {template!r}; choose one of {', '.join(available)}")
    if runtime in available[template]:
        return
    message = (
        f"--template {template} does not go with --runtime {runtime}: "
        f"{template} takes --runtime {' or '.join(available[template])}"
    )
    fits = [t for t, runtimes in available.items() if runtime in runtimes]
    if fits:
        message += f"; --runtime {runtime} goes with --template {fits[0]}"
    raise ScaffoldError(message)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^a-zA-Z0-9]+", name) if part)


def _context(name: str, runtime: str, template: str) -> dict[str, Any]:
    context: dict[str, Any] = {"name": name, "runtime": runtime}
    if template == "no-code":
        library = RUNTIME_LIBRARIES[runtime]
        try:
            library_version = version(library)
        except PackageNotFoundError:
            raise ScaffoldError(
                f"--runtime {runtime} needs {library}, which is not installed; "
                f"pip install 'modelyard[{runtime}]'"
            ) from None
        context.update(library=library, library_version=library_version)
    elif template == "low-code":
        context["class_name"] = _camel(name) + "Predictor"
    elif template == "full-custom":
        context["module"] = re.sub(r"[^a-z0-9_]", "_", name)
        context["python_version"] = f"{sys.version_info.major}.{sys.version_info.minor}"
        context.update({f"{p}_version": version(p) for p in SERVICE_PACKAGES})
    return context


def scaffold(name: str, runtime: str, template: str, directory: Path) -> Path:
    """Make ``directory/name`` from ``template``; returns the new folder."""
    check_combination(runtime, template)
    name_schema = declaration_schema()["properties"]["name"]
    if not re.fullmatch(name_schema["pattern"], name) or len(name) > name_schema["maxLength"]:
        raise ScaffoldError(
            f"{name!r} cannot be a model name: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters (e.g. churn-score)"
        )
    target = directory / name
    if target.exists():
        raise ScaffoldError(f"{target} already exists; choose another NAME or --dir")
    # cookiecutter's generate_* rather than cookiecutter(): no replay file in ~.
    from cookiecutter.generate import generate_context, generate_files
    from cookiecutter.prompt import prompt_for_config

    template_dir = TEMPLATES_DIR / template
    context = generate_context(
        context_file=str(template_dir / "cookiecutter.json"),
        extra_context=_context(name, runtime, template),
    )
    # Resolves choice variables (the given runtime comes first) without asking.
    context["cookiecutter"] = prompt_for_config(context, no_input=True)
    directory.mkdir(parents=True, exist_ok=True)
    generate_files(repo_dir=str(template_dir), context=context, output_dir=str(directory))
    return target
