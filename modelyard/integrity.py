"""Checks made before an artifact is deserialised: its hash and the libraries it needs.

Loading a pickle runs code, and an estimator unpickled by another library version
can load and then answer wrongly: both are refused before anything is loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.utils import canonicalize_name


class IntegrityError(Exception):
    """The artifact or the environment is not what the declaration says."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
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


def version_mismatches(declared: Mapping[str, str]) -> list[str]:
    """One line per declared library whose installed version differs (or is missing)."""
    problems = []
    for name, wanted in sorted(declared.items()):
        try:
            installed = version(canonicalize_name(name))
        except PackageNotFoundError:
            problems.append(f"{name} {wanted} is declared but not installed")
            continue
        if installed != str(wanted):
            problems.append(f"{name}: trained with {wanted}, installed {installed}")
    return problems


def verify_versions(model: str, declared: Mapping[str, str]) -> None:
    problems = version_mismatches(declared)
    if problems:
        raise IntegrityError(
            f"model '{model}': library versions differ from the declaration ("
            + "; ".join(problems)
            + "); install the declared versions or retrain and update model.versions"
        )
