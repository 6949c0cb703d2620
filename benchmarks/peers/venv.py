"""Each peer's own virtualenv under the cache, ~/.cache/modelyard/peers/<name>-<version>.

A peer's server needs its own versions of FastAPI, Starlette, protobuf or grpcio (kserve
0.21 alone would upgrade MLServer's FastAPI in the project's virtualenv), so each peer
gets a virtualenv of its own, built once with the project's Python and pip. The model
libraries are pinned to the project's versions: every server loads the same files with
the same code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

# The libraries that read the model files, at the versions the project serves them with.
MODEL_LIBRARIES = ("scikit-learn", "xgboost", "joblib", "numpy")


def cache_dir() -> Path:
    default = Path.home() / ".cache" / "modelyard" / "peers"
    return Path(os.environ.get("MODELYARD_PEERS", default))


def ensure_venv(name: str, pinned: str, extra: tuple[str, ...] = ()) -> Path:
    """The python of the virtualenv for ``pinned`` (``package==version``, the peer's
    server) and ``extra`` requirements; built when missing (minutes, once)."""
    release = pinned.split("==")[1]
    venv = cache_dir() / f"{name}-{release}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists():
        print(f"installing {pinned} into {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        libraries = [f"{lib}=={version(lib)}" for lib in MODEL_LIBRARIES]
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", pinned, *extra, *libraries],
            check=True,
            cwd=venv,  # not the repository, whose modelyard.egg-info pip would see
        )
        stamp.touch()
    return python
