"""Checks made before an artifact is deserialised: its hash and the libraries it needs.

Loading a pickle runs code, and an estimator unpickled by another library version
can load and then answer wrongly: both are refused before anything is loaded.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from collections.abc import Mapping
from importlib.metadata import Distribution, PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from packaging.utils import canonicalize_name

from modelyard.environments import env_paths
from modelyard.mlserver_internals import settings_folder

if TYPE_CHECKING:
    from mlserver.settings import ModelSettings

# The key of ``parameters.extra`` that carries what a declaration says beyond MLServer's
# settings: the artifact's sha256 and the library versions (checked here) and its
# monitoring (see modelyard.declarations.monitoring).
EXTRA_KEY = "modelyard"


class IntegrityError(Exception):
    """The artifact or the environment is not what the declaration says."""


def sha256_of(path: Path) -> str:
    # The registry verifies before any runtime loads and the runtimes verify again
    # (they also run outside the server): the second look at an unchanged file is
    # free. Any write, rename or utime() changes the inode's ctime, so it misses.
    st = path.stat()
    return _sha256_of(str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, dev: int, ino: int, size: int, ctime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(model: str, path: Path, expected: str) -> None:
    if path.is_dir():
        raise IntegrityError(
            f"model '{model}': sha256 is declared but {path} is a directory; "
            "point model.uri at the artifact file"
        )
    actual = sha256_of(path)
    if actual.lower() != expected.lower():
        raise IntegrityError(
            f"model '{model}': sha256 mismatch for {path.name} "
            f"(expected {expected}, got {actual}); refusing to load"
        )


def _installed(name: str, path: list[str] | None = None) -> str | None:
    """The installed version of a distribution (on ``path``, when given: a model's own
    environment), or None. Looked up again once with
    fresh caches before saying it is missing: importlib.metadata caches what it found
    on each path entry, and a miss there must not refuse a model that is installed."""
    if path is not None:
        for found in Distribution.discover(name=canonicalize_name(name), path=path):
            return found.version
        return None
    for attempt in range(2):
        try:
            return version(canonicalize_name(name))
        except PackageNotFoundError:
            if attempt == 0:
                importlib.invalidate_caches()
    return None


def version_mismatches(declared: Mapping[str, str], path: list[str] | None = None) -> list[str]:
    """One line per declared library whose installed version differs (or is missing)."""
    problems = []
    for name, wanted in sorted(declared.items()):
        installed = _installed(name, path)
        if installed is None:
            problems.append(f"{name} {wanted} is declared but not installed")
            continue
        if installed != str(wanted):
            problems.append(f"{name}: trained with {wanted}, installed {installed}")
    return problems


def verify_versions(model: str, declared: Mapping[str, str], path: list[str] | None = None) -> None:
    problems = version_mismatches(declared, path)
    if problems:
        raise IntegrityError(
            f"model '{model}': library versions differ from the declaration ("
            + "; ".join(problems)
            + "); install the declared versions or retrain and update model.versions"
        )


def artifact_path(settings: ModelSettings) -> Path | None:
    """The local file or folder ``parameters.uri`` names, relative to the settings file;
    None when the model has no URI. A remote URI raises: it cannot be hashed here."""
    uri = settings.parameters.uri if settings.parameters else None
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise IntegrityError(
            f"model '{settings.name}': sha256 is declared but model.uri {uri} is remote and "
            "cannot be verified before loading; download the artifact into the model folder "
            "and point model.uri at it"
        )
    path = Path(parsed.path if parsed.scheme else uri)
    folder = settings_folder(settings)
    if not path.is_absolute() and folder is not None:
        path = folder / path
    return path


def verify_settings(settings: ModelSettings) -> None:
    """Refuse a model whose settings carry a declaration's ``versions`` or ``sha256``
    that the environment or the artifact do not match. Call before any load."""
    extra: dict[str, Any] = (settings.parameters.extra if settings.parameters else None) or {}
    declared = extra.get(EXTRA_KEY) or {}
    if declared.get("versions"):
        env = settings.parameters.environment_path if settings.parameters else None
        # A model on packages of its own is checked against what its worker imports.
        verify_versions(settings.name, declared["versions"], env_paths(env) if env else None)
    if declared.get("sha256"):
        path = artifact_path(settings)
        if path is None:
            raise IntegrityError(
                f"model '{settings.name}': sha256 is declared but there is no model.uri; "
                "name the artifact it covers in model.uri"
            )
        if not path.exists():
            raise IntegrityError(
                f"model '{settings.name}': sha256 is declared for {path}, which does not exist; "
                "put the artifact there or fix model.uri"
            )
        verify_sha256(settings.name, path, declared["sha256"])
