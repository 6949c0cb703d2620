"""Models named by an MLflow registry URI, resolved and pinned.

``models:/churn/3``, ``models:/churn/Production``, ``models:/churn/latest``,
``models:/churn@champion`` and ``runs:/<run id>/<path>`` are resolved against
``MLFLOW_TRACKING_URI`` to the version they name now (``models:/churn/3``), its run and
its source artifact. The model is served from that pinned URI, so nothing resolves an
alias or a stage behind the server's back, and the pin is kept in a file
(``MODELYARD_REGISTRY_PINS``, by default ``~/.cache/modelyard/registry-pins.json``):

- a process that starts again (or a repository API load) serves the version the pin
  names, as long as the folder is the one pinned (same URI, same files);
- a changed folder (a new deploy) resolves its URI afresh;
- ``modelyard serve --watch-registry`` polls the registry and, when an alias, a stage or
  ``latest`` moves, loads the new version through the registry's swap.

MLflow is imported only when a model names such a URI (the ``mlflow`` extra).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PINS_ENV = "MODELYARD_REGISTRY_PINS"
MODELS = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<ref>[^/]+)|@(?P<alias>[^/]+))/?$")
RUNS = re.compile(r"^runs:/(?P<run>[^/]+)(?:/(?P<path>.*))?$")


class RegistryUriError(Exception):
    """A registry URI that does not name a model version the tracking server has."""


@dataclass(frozen=True)
class Resolved:
    """What a registry URI names now."""

    uri: str  # as declared
    pinned: str  # what is served: models:/name/N, or the runs:/ URI
    version: str | None  # the registry version (None for runs:/)
    run_id: str | None
    source: str | None  # where the version's files are

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_registry_uri(uri: str | None) -> bool:
    return bool(uri) and str(uri).startswith(("models:/", "runs:/"))


def moves(uri: str) -> bool:
    """Whether ``uri`` can name another version later (an alias, a stage, latest)."""
    match = MODELS.match(uri)
    return match is not None and not (match["ref"] or "").isdigit()


def tracking_uri(server: str | None = None) -> str:
    return (
        server
        or os.environ.get("MLFLOW_TRACKING_URI", "")
        or "./mlruns (MLFLOW_TRACKING_URI unset)"
    )


def resolve(uri: str, server: str | None = None) -> Resolved:
    """``uri`` resolved against the tracking server ``server`` (by default
    MLFLOW_TRACKING_URI); RegistryUriError naming the URI, the server and what to fix
    when it names nothing."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server)
    try:
        if match := MODELS.match(uri):
            name = match["name"]
            if match["alias"]:
                found = client.get_model_version_by_alias(name, match["alias"])
            elif (ref := match["ref"]).isdigit():
                found = client.get_model_version(name, ref)
            else:
                stages = None if ref.lower() == "latest" else [ref]
                versions = client.get_latest_versions(name, stages=stages)
                if not versions:
                    raise RegistryUriError(
                        f"{uri}: the registry at {tracking_uri(server)} has no version of "
                        f"'{name}' in stage {ref}; register one or name a version"
                    )
                found = max(versions, key=lambda v: int(v.version))
            version = str(found.version)
            # Where its files are (MLflow 3's `source` is a logged model's models:/m-<id>).
            source = client.get_model_version_download_uri(name, version)
            return Resolved(uri, f"models:/{name}/{version}", version, found.run_id, source)
        if match := RUNS.match(uri):
            run = client.get_run(match["run"])
            path = (match["path"] or "").strip("/")
            source = f"{run.info.artifact_uri}/{path}" if path else run.info.artifact_uri
            return Resolved(uri, uri, None, run.info.run_id, source)
    except MlflowException as e:
        raise RegistryUriError(
            f"{uri}: the registry at {tracking_uri(server)} answered: {e.message}; check the name, "
            "version, alias or run, and MLFLOW_TRACKING_URI"
        ) from None
    raise RegistryUriError(
        f"{uri}: not a registry URI; write models:/<name>/<version or stage>, "
        "models:/<name>@<alias> or runs:/<run id>/<path>"
    )


def pins_path() -> Path:
    if path := os.environ.get(PINS_ENV):
        return Path(path)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "modelyard" / "registry-pins.json"


def _read_pins(path: Path) -> dict[str, Any]:
    try:
        pins = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return pins if isinstance(pins, dict) else {}


def pinned(folder: Path, uri: str, fingerprint: str) -> Resolved | None:
    """The version pinned for ``folder`` when it was last served with these files and
    this URI, else None."""
    pin = _read_pins(pins_path()).get(str(folder))
    if not isinstance(pin, dict) or pin.get("fingerprint") != fingerprint:
        return None
    try:
        found = Resolved(**pin["resolved"])
    except (KeyError, TypeError):
        return None
    return found if found.uri == uri else None


def pin(folder: Path, resolved: Resolved, fingerprint: str) -> None:
    """Record that ``folder`` (these files) serves ``resolved``: under a lock, since the
    server's processes each pin the folders they load, and replaced in one step, so no
    process reads half a file."""
    path = pins_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pins = _read_pins(path)
        pins[str(folder)] = {"fingerprint": fingerprint, "resolved": resolved.as_dict()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pins-")
        with os.fdopen(fd, "w") as f:
            json.dump(pins, f, indent=1)
        os.replace(tmp, path)
