"""The KServe SDK (PyPI kserve) as a client, in a virtualenv of its own under the cache.

kserve 0.21 needs FastAPI 0.165 and Starlette 1.x, where MLServer 1.7 runs on FastAPI
0.115 (`pip install --dry-run kserve` would upgrade both in the project's virtualenv,
and pinning FastAPI makes pip pick kserve 0.16 and downgrade protobuf to 5). So the
SDK's clients run in `kserve_client.py` in that virtualenv, in a subprocess.

`python -m tests.support.kserve_sdk` builds the virtualenv (`make test` does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

VERSION = "0.21.0"
CLIENT = Path(__file__).with_name("kserve_client.py")


def venv_dir() -> Path:
    default = Path.home() / ".cache" / "modelyard" / f"kserve-{VERSION}"
    return Path(os.environ.get("MODELYARD_KSERVE_VENV", default))


def ensure_kserve() -> Path:
    """The virtualenv's python, with kserve installed; built when missing."""
    python = venv_dir() / "bin" / "python"
    stamp = venv_dir() / ".installed"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv_dir())], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", f"kserve=={VERSION}"], check=True
        )
        stamp.touch()
    return python


def run_kserve_client(
    rest_url: str, grpc_url: str, requests: list[dict[str, Any]], timeout: float = 300.0
) -> dict[str, Any]:
    """The SDK's answers over REST (``InferenceRESTClient``, numpy data in binary) and
    gRPC (``InferenceGRPCClient``): ``{"rest"|"grpc": {"live", "ready", "answers"}}``."""
    done = subprocess.run(
        [str(ensure_kserve()), str(CLIENT)],
        input=json.dumps({"rest": rest_url, "grpc": grpc_url, "requests": requests}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the KServe client failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(ensure_kserve())
