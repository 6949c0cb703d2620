"""What to say when a runtime cannot read a model's artifact.

A damaged file fails deep inside its library (`KeyError: 172` from joblib, twenty
lines of C++ stack from XGBoost). For the runtimes that read one artifact file, the
error names the model, the file, what it should be and the fix, in one line.
"""

from __future__ import annotations

import re
from pathlib import Path

from mlserver.settings import ModelSettings

from modelyard.declarations.integrity import IntegrityError, artifact_path

# Runtime class -> what its artifact file is.
ARTIFACT_KINDS = {
    "mlserver_sklearn.SKLearnModel": "scikit-learn/joblib",
    "mlserver_xgboost.XGBoostModel": "XGBoost",
}


# A native library's own prefix on its first line: "[07:31:32] src/common/json.cc:409: ".
_NATIVE_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


class UnreadableArtifact(Exception):
    """The model's artifact is there but its library cannot read it."""


def _artifact(settings: ModelSettings) -> Path | None:
    try:
        path = artifact_path(settings)
    except IntegrityError:
        return None  # remote: the runtime fetches it, and its error stands
    return path if path is not None and path.is_file() else None


def unreadable(settings: ModelSettings, error: BaseException) -> UnreadableArtifact | None:
    """The one-line error for ``error``, raised by ``settings``' runtime while loading,
    when the runtime reads one artifact file that exists; else None."""
    kind = ARTIFACT_KINDS.get(settings.implementation_ or "")
    path = _artifact(settings) if kind else None
    if kind is None or path is None:
        return None
    lines = str(error).strip().splitlines()
    first = _NATIVE_PREFIX.sub("", lines[0])[:200] if lines else ""
    detail = type(error).__name__ + (f": {first}" if first else "")
    return UnreadableArtifact(
        f"model '{settings.name}': {path.name} is not a readable {kind} file ({detail}); "
        "re-export it"
    )


async def check_readable(settings: ModelSettings) -> str | None:
    """Load the model once, for `modelyard validate`: the artifact error, or None when it
    reads (or its runtime reads no single artifact file, which only serving shows)."""
    if ARTIFACT_KINDS.get(settings.implementation_ or "") is None or _artifact(settings) is None:
        return None
    model = settings.implementation(settings)
    try:
        await model.load()
    except Exception as e:
        found = unreadable(settings, e)
        return str(found) if found is not None else f"model '{settings.name}': {e}"
    finally:
        await model.unload()
    return None
