"""Import a user's class from `file.py:Class` (inside a model folder) or `package.module:Class`."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path


class ClassSpecError(ValueError):
    """The spec cannot be resolved; the message says why and how to fix it."""


def is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def load_class(spec: str, folder: Path | None = None) -> type:
    """Resolve ``spec`` to a class.

    ``predictor.py:GenderPredictor`` is loaded from ``folder`` (and must stay inside it);
    ``package.module:Class`` is imported from the environment. Each model folder's file
    is imported under a name of its own, so two folders may both have a `predictor.py`.
    """
    module_part, sep, attr = spec.partition(":")
    if not sep or not module_part or not attr:
        raise ClassSpecError(f"{spec!r} is not 'file.py:Class' or 'package.module:Class'")
    if module_part.endswith(".py"):
        if folder is None:
            raise ClassSpecError(f"{spec!r}: a file path needs the model folder")
        path = folder / module_part
        if not is_inside(path, folder):
            raise ClassSpecError(f"{spec!r}: {module_part} is outside the model folder {folder}")
        if not path.is_file():
            raise ClassSpecError(f"{spec!r}: no file {module_part} in {folder}")
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        name = f"modelyard_user_{path.stem}_{digest}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ClassSpecError(f"{spec!r}: cannot import {path}")
        module = importlib.util.module_from_spec(module_spec)
        # The folder is importable while the file runs, for helper modules beside it.
        sys.path.insert(0, str(folder.resolve()))
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise ClassSpecError(
                f"{spec!r}: importing {path} failed: {type(e).__name__}: {e}"
            ) from e
        finally:
            sys.path.remove(str(folder.resolve()))
    else:
        try:
            module = importlib.import_module(module_part)
        except Exception as e:
            raise ClassSpecError(
                f"{spec!r}: cannot import module {module_part}: {type(e).__name__}: {e}"
            ) from e
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise ClassSpecError(f"{spec!r}: {module_part} has no class {attr}")
    return cls
