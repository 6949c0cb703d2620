"""The quality settings of the model a command names (``modelyard feedback load``,
``modelyard metrics``): its folder's monitoring, or a store given on the command line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from modelyard.declarations.folders import load_model_folder, resolve_model_folder
from modelyard.declarations.monitoring import QualityConfig
from modelyard.errors import QualityError


def config_for(target: str, directory: Path, store: str | None = None) -> QualityConfig:
    """The quality settings of the model ``target``: a model folder (or its
    model.yaml), or the name of a model served from ``directory``; ``store`` (a URL)
    overrides the declared store."""
    folder = resolve_model_folder(target, directory)
    if folder is None:
        raise QualityError(
            f"no model {target!r}: give a model folder (e.g. examples/customer-profile) or the "
            f"name of a model in {directory} (--dir)"
        )
    settings = load_model_folder(folder)
    config = QualityConfig.from_settings(settings)
    if config is None:
        if store is None:
            raise QualityError(
                f"model '{settings.name}' ({folder}) has no store to keep labels in: "
                "declare a monitoring block (or predictions.store) in its model.yaml, "
                "or pass --store URL"
            )
        config = QualityConfig(settings.name, settings.version or "", folder, store)
    return replace(config, store=store) if store else config
