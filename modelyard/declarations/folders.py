"""Model folders: find them in a directory and turn each into MLServer settings.

A model folder holds either a plain MLServer ``model-settings.json`` or a
modelyard declaration ``model.yaml``. Both end as an ``mlserver.settings.ModelSettings``
whose relative paths resolve against the folder, wherever the server was started.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from modelyard.declarations.interpolate import MissingVariable, expand
from modelyard.declarations.load import DECLARATION_FILENAME
from modelyard.declarations.settings import MODEL_SETTINGS_FILENAME, model_settings_for_folder
from modelyard.declarations.validate import check_model_settings
from modelyard.errors import InvalidModelFolder, Problem
from modelyard.mlserver_internals import SOURCE_KEY

if TYPE_CHECKING:  # MLServer is imported only where settings objects are built:
    from mlserver.settings import ModelSettings  # the operator does without it

MARKER_FILENAMES = (DECLARATION_FILENAME, MODEL_SETTINGS_FILENAME)


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in MARKER_FILENAMES)


def find_model_folders(root: Path) -> list[Path]:
    """Every model folder directly below ``root``, in name order (hidden ones skipped)."""
    if is_model_folder(root):
        return [root]
    return sorted(
        p for p in root.iterdir() if not p.name.startswith((".", "_")) and is_model_folder(p)
    )


def resolve_model_folder(target: str | Path, directory: Path | None = None) -> Path | None:
    """The model folder ``target`` names, or None: a model folder, or its model.yaml (or
    model-settings.json); with ``directory``, also a folder of ``directory`` by its name,
    or the folder of the model named ``target`` there (loading each folder's settings,
    so an invalid one raises InvalidModelFolder)."""
    path = Path(target)
    if path.is_file() and path.name in MARKER_FILENAMES:
        return path.parent
    if is_model_folder(path):
        return path
    if directory is None:
        return None
    if is_model_folder(directory / target):
        return directory / target
    for folder in find_model_folders(directory) if directory.is_dir() else []:
        if load_model_folder(folder).name == target:
            return folder
    return None


def marker_file(folder: Path) -> Path:
    """The file that makes ``folder`` a model folder; a declaration wins."""
    for name in MARKER_FILENAMES:
        if (folder / name).is_file():
            return folder / name
    raise InvalidModelFolder(
        str(folder),
        [
            Problem(
                str(folder),
                "",
                f"no {DECLARATION_FILENAME} or {MODEL_SETTINGS_FILENAME}: "
                "add one to make this a model folder",
            )
        ],
    )


def read_model_settings_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InvalidModelFolder(
            str(path.parent),
            [
                Problem(
                    str(path), "", f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
                )
            ],
        ) from None
    if not isinstance(data, dict):
        raise InvalidModelFolder(
            str(path.parent), [Problem(str(path), "", "must be a JSON object")]
        )
    return data


def settings_dict(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The MLServer model settings of a folder as a plain dict, validated."""
    marker = marker_file(folder)
    if marker.name == DECLARATION_FILENAME:
        return marker, model_settings_for_folder(folder)
    data = read_model_settings_json(marker)
    # As MLServer does: a model-settings.json without a name is named after its folder.
    data.setdefault("name", folder.name)
    problems = check_model_settings(data, marker)
    if problems:
        raise InvalidModelFolder(str(folder), problems)
    return marker, data


def to_model_settings(data: dict[str, Any], source: Path) -> ModelSettings:
    """Build MLServer's settings object; relative URIs are anchored on the folder.

    MLServer resolves a relative ``parameters.uri`` against the settings file for
    some runtimes and against the working directory for others (Hugging Face):
    an absolute path means the same thing to all of them.
    """
    from mlserver.settings import ModelSettings

    data = json.loads(json.dumps(data))  # deep copy; ModelSettings mutates its input
    params = data.get("parameters") or {}
    uri = params.get("uri")
    if uri:
        # MLServer's runtimes take the URI as it is: placeholders are expanded here.
        try:
            uri = params["uri"] = expand(uri)
        except MissingVariable as e:
            raise InvalidModelFolder(
                str(source.parent), [Problem(str(source), "/parameters/uri", str(e))]
            ) from None
    # MLflow's registry URIs (models:/churn/3, runs:/<id>/model) name no local path.
    if (
        uri
        and "://" not in uri
        and not uri.startswith(("models:/", "runs:/"))
        and not os.path.isabs(uri)
    ):
        params["uri"] = os.path.normpath(source.parent.resolve() / uri)
    data[SOURCE_KEY] = str(source.resolve())
    try:
        return ModelSettings.model_validate(data)
    except ValidationError as e:
        raise InvalidModelFolder(
            str(source.parent),
            [
                Problem(str(source), "/" + "/".join(str(p) for p in err["loc"]), err["msg"])
                for err in e.errors()
            ],
        ) from None


def load_model_folder(folder: Path) -> ModelSettings:
    """Validate a model folder and return the settings MLServer loads it with."""
    source, data = settings_dict(folder)
    return to_model_settings(data, source.parent / MODEL_SETTINGS_FILENAME)
